"""The command line's parser. Each command's code is in its own module, imported only when the command runs,
so building the parser (and `supermask --help`) imports nothing heavy."""

from __future__ import annotations

import argparse
import importlib

from supermask import __version__
from supermask.multi import FORWARDS
from supermask.run.configs import builtin_configs

DEFAULT_CONFIG = "digits"


def _command(module: str):
    """The command's `run(args)`, imported when it is called."""

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"supermask.cli.{module}").run(args)

    return run


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


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be >= {least}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


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
    train.set_defaults(func=_command("train"))

    ev = sub.add_parser("eval", help="re-evaluate a finished run, or a .smask file, on its test set")
    ev.add_argument("run_dir", metavar="RUN_DIR|NET.smask", help="a run directory or an exported .smask file")
    ev.add_argument("overrides", nargs="*", metavar="dataset=PATH|data_dir=DIR|task=N|task=infer",
                    help="where to find the data, when not where the run found it (another machine, a moved copy); "
                         "for a .smask file of many tasks, the task whose network to evaluate (task=N), or task=infer: "
                         "each task's test batches with their task inferred (infer=one-shot|binary|min-entropy, "
                         "batch_size=128, images=N per task, infer_from=K: the task read off each batch's first K "
                         "images, 1 in SupSup's scripts)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    ev.set_defaults(func=_command("eval"))

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
    st.set_defaults(func=_command("study"))

    cp = sub.add_parser("compare", help="compare the masks of finished runs (Jaccard, matching, plots)")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of one model and width")
    cp.add_argument("--out", required=True, metavar="DIR", help="where pairs.csv, summary.json and the PNGs go")
    cp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cp.set_defaults(func=_command("compare"))

    ex = sub.add_parser("export", help="write a finished run as a .smask file: seeds plus compressed bit masks")
    ex.add_argument("run_dir", help="a finished mask-search run directory")
    ex.add_argument("-o", "--output", required=True, metavar="NET.smask", help="the .smask file to write")
    ex.add_argument("--safetensors", metavar="PATH", help="also write the rebuilt network's dense weights")
    ex.add_argument("--onnx", metavar="PATH", help="also write the rebuilt network as ONNX (needs onnx): input "
                    "`images` (float N,C,H,W) or, for text-transformer, `tokens` (int64 N,length), output `logits`")
    ex.set_defaults(func=_command("export"))

    pr = sub.add_parser("predict", help="classify image files with a .smask network, prepared as its run read images",
                        description="Prepare each image as the header of NET.smask records (channel order, resize to "
                                    "the run's image size, pixels scaled by 1/255 and normalized with the run's "
                                    "per-channel mean and std), run the network and print the most likely classes.")
    pr.add_argument("net", metavar="NET.smask", help="an exported .smask file (format version 2 or later)")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow reads (JPEG, PNG, ...)")
    pr.add_argument("--top", type=_positive_int, default=3, metavar="K", help="classes shown per image (default 3)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    pr.add_argument("--task", type=_non_negative_int, metavar="N", help="in a file of many tasks, task N's network")
    pr.set_defaults(func=_command("predict"))

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
    pa.set_defaults(func=_command("path"))

    no = sub.add_parser("norms", help="per-layer Frobenius norms of kept and pruned weights")
    no.add_argument("run_dir", help="a mask-search run")
    no.add_argument("--dense", metavar="DENSE_RUN", help="a dense run of the same model: its norms and its magnitude pruning")
    no.add_argument("--out", required=True, metavar="DIR", help="where norms.json and norms.png go")
    no.set_defaults(func=_command("norms"))

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
    tg.set_defaults(func=_command("together"))

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
    sw.set_defaults(func=_command("sweep"))

    cf = sub.add_parser("configs", help="list the built-in configs, or show one resolved (with overrides)")
    cf.add_argument("name", nargs="?", help="a built-in config name or a YAML file")
    cf.add_argument("overrides", nargs="*", metavar="key=value", help="config values to preview (method=biprop+iwr)")
    cf.set_defaults(func=_command("configs"))
    return parser
