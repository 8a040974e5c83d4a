"""The `supermask` command line: train, eval, study, together, compare, path, norms, export, predict, sweep, configs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from supermask import __version__
from supermask.errors import SupermaskError
from supermask.multi import FORWARDS
from supermask.run.configs import builtin_configs

# Everything else is imported by the command that needs it, so `supermask --help` starts without torch.

DEFAULT_CONFIG = "digits"


def _train(args: argparse.Namespace) -> int:
    from supermask.run import distributed
    from supermask.run.train import run  # imported late so `--help` stays fast

    from supermask.run.config import parse_overrides

    cfg = train_config(args.config, parse_overrides(args.overrides), args.resume)
    try:
        summary = run(cfg, resume=args.resume, progress=not args.quiet)
    finally:
        distributed.shutdown()
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    kept = summary["params_kept"] / summary["params_total"]
    print(f"test accuracy {100 * summary['test_acc']:.2f}% after {summary['epochs']} epochs "
          f"(best {100 * summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}); "
          f"{summary['method']} keeps {summary['params_kept']:,} of {summary['params_total']:,} weights ({100 * kept:.1f}%); "
          f"{summary['seconds']:.1f} s")
    print(f"run written to {summary['out_dir']}")
    return 0


def train_config(config: str | None, overrides: dict, resume: bool):
    """The config `train` runs. `--resume` without a CONFIG continues the run in out_dir from its own config.yaml:
    the overrides given with it must then make the same run (`supermask.run.rundir`), which `run` checks."""
    from supermask.run.config import make_config
    from supermask.run.rundir import holds_run, recorded

    out_dir = overrides.get("out_dir")
    if config is None and resume and out_dir is not None and holds_run(out_dir):
        return make_config(recorded(out_dir).to_dict(), overrides)
    return make_config(config or DEFAULT_CONFIG, overrides)


def _eval(args: argparse.Namespace) -> int:
    from supermask.export.smask import evaluate_smask
    from supermask.run.config import parse_overrides
    from supermask.run.train import evaluate_run

    data = parse_overrides(args.overrides)
    if set(data) - {"dataset", "data_dir"}:
        raise SupermaskError(f"eval takes only dataset=PATH and data_dir=DIR, not {sorted(set(data) - {'dataset', 'data_dir'})[0]}=")
    evaluate = evaluate_smask if args.run_dir.endswith(".smask") else evaluate_run
    result = evaluate(args.run_dir, device=args.device, **{k: str(v) for k, v in data.items() if v is not None})
    print(json.dumps(result, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from supermask.analysis.landscape import write_comparison

    summary = write_comparison(args.run_dirs, args.out, plots=not args.no_plots)
    _print_landscape(summary)
    print(f"comparison written to {args.out}")
    return 0


def _print_landscape(summary: dict) -> None:
    from supermask.analysis.landscape import TOTAL

    for key, layers in summary["by_method_pair"].items():
        t = layers[TOTAL]
        print(f"{key}: {t['pairs']} pairs, whole-mask Jaccard {t['jaccard']:.3f} "
              f"(min {t['jaccard_min']:.3f}, max {t['jaccard_max']:.3f}; chance {t['chance_jaccard']:.3f}), "
              f"matching {t['matching']:.3f} (chance {t['chance_matching']:.3f})")


def _study(args: argparse.Namespace) -> int:
    from supermask.multi.study import run_study
    from supermask.run.config import parse_overrides

    summary = run_study(args.config, parse_overrides(args.overrides), score_seeds=args.score_seeds,
                        weight_seeds=args.weight_seeds, progress=not args.quiet,
                        together=args.together, forward=args.forward, retrain=args.retrain)
    _print_landscape(summary)
    return 0


def _export(args: argparse.Namespace) -> int:
    from supermask.export import smask as export

    for what, path in (("-o", args.output), ("--safetensors", args.safetensors), ("--onnx", args.onnx)):
        if path:
            export.check_output(path, what)
    report = export.export_run(args.run_dir, args.output)
    masks = (f"{report['mask_vs_entropy']}x their entropy bound of {report['entropy_bytes']:,.0f} bytes (the codes "
             f"{report['codes_vs_entropy']:.4f}x, plus {report['mask_head_bytes']} bytes of heads over "
             f"{report['mask_layers']} layers)" if report["mask_vs_entropy"] is not None
             else "every weight kept, so the entropy bound is 0 bytes")
    print(f"{report['file']}: {report['bytes']:,} bytes ({report['compression']}x smaller than the "
          f"{report['dense_float32_bytes']:,} bytes of dense float32 weights); masks {report['mask_bytes']:,} bytes, "
          f"{masks}")
    if args.safetensors or args.onnx:
        model = export.load(args.output)
        if args.safetensors:
            export.save_plain(model, args.safetensors, export.header_of(args.output))
            print(f"dense weights written to {args.safetensors}")
        if args.onnx:
            export.save_onnx(model, export.header_of(args.output), args.onnx)
            print(f"ONNX model written to {args.onnx}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from supermask.export.smask import predict

    for result in predict(args.net, args.images, top=args.top, device=args.device):
        ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{result['image']}: {ranked}")
    return 0


def _path(args: argparse.Namespace) -> int:
    from supermask.analysis.paths import mask_path
    from supermask.analysis.plots import path_plot

    result = mask_path(args.run_a, args.run_b, steps=args.steps, device=args.device)
    out = _save_result(args.out, "path", result, path_plot)
    for p in result["points"]:
        print(f"t={p['t']:.2f}  test accuracy {100 * p['test_acc']:.2f}%  Hamming to A {p['hamming_to_a']:.3f}")
    print(f"mask path written to {out}")
    return 0


def _norms(args: argparse.Namespace) -> int:
    from supermask.analysis.norms import layer_norms
    from supermask.analysis.plots import norms_plot

    result = layer_norms(args.run_dir, dense_run=args.dense)
    out = _save_result(args.out, "norms", result, norms_plot)
    print("kept, pruned: norms of the random weights W under and outside the mask; effective: of the weight the "
          "network computes with (W * M, or for Biprop alpha * sign(W) * M)")
    for r in result["layers"]:
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"norms written to {out}")
    return 0


def _save_result(out_dir: str, stem: str, result: dict, plot) -> Path:
    """OUT_DIR/<stem>.json and its plot OUT_DIR/<stem>.png; returns the folder."""
    from supermask.run.checkpoint import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    plot(result, out / f"{stem}.png")
    return out


def _together(args: argparse.Namespace) -> int:
    from supermask.multi.together import read_group_file, train_together

    group_dir, configs = read_group_file(args.group_file)
    summaries = train_together(configs, group_dir, forward=args.forward, progress=not args.quiet)
    for s in summaries:
        print(f"{s['out_dir']}: test accuracy {100 * s['test_acc']:.2f}%")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from supermask.multi.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep_file)
    if args.workers:
        sweep.workers = args.workers
    if sweep.gpus_per_cell and not args.ray:
        print(f"supermask: warning: gpus_per_cell={sweep.gpus_per_cell:g} reserves GPUs only on Ray (--ray); the "
              f"{sweep.workers} local worker(s) share this machine's devices", file=sys.stderr)
    result = run_sweep(sweep, ray_address=args.ray, progress=not args.quiet, retrain=args.retrain)
    print(f"{result['finished']} of {result['cells']} cells finished; results in {sweep.out_dir}/results.csv, "
          f"results.md and results.png")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from supermask.run.config import make_config, parse_overrides, read_config_source

    if args.name and "=" in args.name:  # overrides alone preview the default config
        args.overrides.insert(0, args.name)
        args.name = DEFAULT_CONFIG
    if args.name:
        cfg = make_config(args.name, parse_overrides(args.overrides))
        given = " ".join(args.overrides)
        print(f"# {args.name}{' ' + given if given else ''}: {json.dumps(read_config_source(args.name))}")
        print("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.to_dict().items()))
    else:
        print("\n".join(builtin_configs()))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command line. `epilog_from`, when set, makes the
    epilog when the help is shown, so building the parser imports nothing heavy."""

    epilog_from = None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def _train_epilog() -> str:
    from supermask.run.config import config_help

    return (f"config keys (set in the YAML file or as key=value):\n{config_help()}\n\n"
            f"built-in configs: {', '.join(builtin_configs())}\n"
            "example: supermask train conv4 method=biprop prune_rate=0.9 width=0.25 epochs=10 out_dir=runs/x")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="supermask", description="Find accurate subnetworks hidden in random networks.")
    parser.add_argument("--version", action="version", version=f"supermask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="search a subnetwork (or train a dense baseline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one run and write config.yaml, metrics.jsonl, summary.json, masks.safetensors and "
                    "checkpoint.safetensors to its out_dir.",
    )
    train.epilog_from = _train_epilog  # the config keys, listed when the help is shown (it imports the config)
    train.add_argument("config", nargs="?", default=None,
                       help=f"a built-in config name or a YAML file (default: {DEFAULT_CONFIG}; with --resume, the "
                            "run's own config.yaml)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config values overriding CONFIG's")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in out_dir from its last checkpoint; overrides may change only what "
                            "changes no result (logger, num_workers, checkpoint_every_steps)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="re-evaluate a finished run, or a .smask file, on its test set")
    ev.add_argument("run_dir", metavar="RUN_DIR|NET.smask", help="a run directory or an exported .smask file")
    ev.add_argument("overrides", nargs="*", metavar="dataset=PATH|data_dir=DIR",
                    help="where to find the data, when not where the run found it (another machine, a moved copy)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    ev.set_defaults(func=_eval)

    st = sub.add_parser("study", help="train runs that differ only in their seeds, then compare their masks",
                        description="Runs share the weight seed and differ in score seed (with --weight-seeds M, M "
                                    "weight seeds x N score seeds; score seeds count on across weight seeds, so no "
                                    "two runs start from the same scores). Runs go to OUT_DIR/runs, the comparison to "
                                    "OUT_DIR/compare; finished runs are reused when the study is run again with "
                                    "the same config (another config is refused, or retrained with --retrain).")
    st.add_argument("config", help="a built-in config name or a YAML file")
    st.add_argument("overrides", nargs="*", metavar="key=value", help="config values; out_dir=DIR is required")
    st.add_argument("--score-seeds", type=int, required=True, metavar="N", help="score seeds per weight seed")
    st.add_argument("--weight-seeds", type=int, default=1, metavar="M", help="weight seeds (default 1)")
    st.add_argument("--together", action="store_true",
                    help="train the runs at once in this process (stacked scores, one optimizer, shared batches); "
                         "same masks as separate runs, higher throughput for small networks")
    st.add_argument("--forward", choices=FORWARDS, default="auto",
                    help="with --together: vmap batches the runs into grouped layers (GPUs), loop runs them in "
                         "turn (faster on CPUs); auto picks by device (default)")
    st.add_argument("--retrain", action="store_true",
                    help="delete and train again the runs trained with another config (default: refuse)")
    st.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    st.set_defaults(func=_study)

    cp = sub.add_parser("compare", help="compare the masks of finished runs (Jaccard, matching, plots)")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of one model and width")
    cp.add_argument("--out", required=True, metavar="DIR", help="where pairs.csv, summary.json and the PNGs go")
    cp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cp.set_defaults(func=_compare)

    ex = sub.add_parser("export", help="write a finished run as a .smask file: seeds plus compressed bit masks")
    ex.add_argument("run_dir", help="a finished mask-search run directory")
    ex.add_argument("-o", "--output", required=True, metavar="NET.smask", help="the .smask file to write")
    ex.add_argument("--safetensors", metavar="PATH", help="also write the rebuilt network's dense weights")
    ex.add_argument("--onnx", metavar="PATH", help="also write the rebuilt network as ONNX (needs onnx): input "
                    "`images` (float N,C,H,W) or, for text-transformer, `tokens` (int64 N,length), output `logits`")
    ex.set_defaults(func=_export)

    pr = sub.add_parser("predict", help="classify image files with a .smask network, prepared as its run read images",
                        description="Prepare each image as the header of NET.smask records (channel order, resize to "
                                    "the run's image size, pixels scaled by 1/255 and normalized with the run's "
                                    "per-channel mean and std), run the network and print the most likely classes.")
    pr.add_argument("net", metavar="NET.smask", help="an exported .smask file (format version 2 or later)")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow reads (JPEG, PNG, ...)")
    pr.add_argument("--top", type=_positive_int, default=3, metavar="K", help="classes shown per image (default 3)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    pr.set_defaults(func=_predict)

    pa = sub.add_parser(
        "path", help="test accuracy along a path between two runs' masks (same random weights)",
        description="Interpolate the two runs' scores and evaluate the mask each point selects: at t from 0 to 1, "
                    "each layer keeps the top-k of (1 - t) |S_A| + t |S_B|, where each run's |S| is divided by its "
                    "layer's largest pruned magnitude (so both masks' boundaries sit at 1; t=0 gives mask A, t=1 "
                    "mask B). Every point keeps the runs' prune rate, over the same random weights. Prints and "
                    "writes each point's test accuracy and loss and its Hamming distance to A and to B.")
    pa.add_argument("run_a", metavar="RUN_A", help="a finished mask-search run directory (the path's start, t=0)")
    pa.add_argument("run_b", metavar="RUN_B", help="a finished mask-search run of the same model, width, method, "
                    "prune rate, dataset and masked weights, with the same random weights (weight seed, no IWR or "
                    "IteRand): the path's end, t=1")
    pa.add_argument("--out", required=True, metavar="DIR", help="where path.json and path.png go")
    pa.add_argument("--steps", type=int, default=11, metavar="N",
                    help="points from mask A to mask B, t evenly spaced in [0, 1], at least 2 (default 11)")
    pa.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    pa.set_defaults(func=_path)

    no = sub.add_parser("norms", help="per-layer Frobenius norms of kept and pruned weights")
    no.add_argument("run_dir", help="a mask-search run")
    no.add_argument("--dense", metavar="DENSE_RUN", help="a dense run of the same model: its norms and its magnitude pruning")
    no.add_argument("--out", required=True, metavar="DIR", help="where norms.json and norms.png go")
    no.set_defaults(func=_norms)

    tg = sub.add_parser("together", help="train runs that differ only in their seeds at once, in this process",
                        description="GROUP.json holds {\"group_dir\": DIR, \"runs\": [{\"config\": NAME_OR_YAML, "
                                    "\"overrides\": {key: value, ...}}, ...]}; every run needs its own out_dir and "
                                    "may differ from the others only in weight_seed, score_seed and data_seed. Each "
                                    "run's directory is written as by `train`; an interrupted group resumes from "
                                    "DIR when started again. (`study --together` and sweeps with `together: true` "
                                    "use this.)")
    tg.add_argument("group_file", metavar="GROUP.json", help="the group's runs and group_dir, as described above")
    tg.add_argument("--forward", choices=FORWARDS, default="auto",
                    help="vmap: one batched pass through grouped layers (GPUs); loop: the runs in turn (CPUs)")
    tg.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    tg.set_defaults(func=_together)

    sw = sub.add_parser("sweep", help="run a grid of runs (local worker processes or a Ray cluster) and tabulate them",
                        description="Expand the grid of SWEEP.yaml, run every unfinished cell in its own process, re-run "
                                    "cells whose worker died, and write results.csv, results.md and results.png. "
                                    "A cell already run with another config is refused (or retrained with --retrain); "
                                    "so is a second sweep on an out_dir while one runs. Cells that differ only in a "
                                    "seed their method does not use (dense: score_seed) run once.")
    sw.add_argument("sweep_file", metavar="SWEEP.yaml", help="base, set, grid, out_dir, workers, gpus_per_cell (with "
                    "--ray), retries and together (see 'Scaling out' in the README)")
    sw.add_argument("--workers", type=_positive_int, help="local worker processes (overrides the file's workers)")
    sw.add_argument("--ray", metavar="ADDRESS", help="run the cells on Ray: 'auto' (the running cluster), "
                                                     "'local' (start one on this machine) or a cluster address")
    sw.add_argument("--retrain", action="store_true",
                    help="delete and train again the cells run with another config (default: refuse)")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    sw.set_defaults(func=_sweep)

    cf = sub.add_parser("configs", help="list the built-in configs, or show one resolved (with overrides)")
    cf.add_argument("name", nargs="?", help="a built-in config name or a YAML file")
    cf.add_argument("overrides", nargs="*", metavar="key=value", help="config values to preview (method=biprop+iwr)")
    cf.set_defaults(func=_configs)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as the program, not called from Python: this process is ours to tune
        from supermask.multi.worker import die_with_parent
        from supermask.compat import keep_freed_memory

        keep_freed_memory()
        die_with_parent()  # a sweep's worker ends with its sweep
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a nargs="*" positional only once, so key=value pairs after a flag
    # (`train digits --resume epochs=3`) come back unrecognized: they are overrides too.
    if extra:
        if getattr(args, "command", None) in ("train", "study", "eval", "configs") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # A config name given alone with overrides after it parses as config=first override: put it back.
    if getattr(args, "command", None) == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that left (`| head`) surfaces here
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as if killed by SIGPIPE, like other tools cut off by `head`
    except SupermaskError as e:
        print(f"supermask: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # an input file that is not text
        print(f"supermask: error: an input file is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (a file where a folder is wanted, a full disk, permissions)
        where = f"{e.filename}: " if e.filename else ""
        print(f"supermask: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command with --resume" if args.command == "train" else "the same command again"
        print(f"supermask: interrupted; continue with {again}", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's own flush at exit does not fail again on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (called from Python, output captured)


if __name__ == "__main__":
    sys.exit(main())
