"""`supermask train`: one run, or `--resume` of one."""

from __future__ import annotations

import argparse
import os

from supermask.cli.parser import DEFAULT_CONFIG

def run(args: argparse.Namespace) -> int:
    from supermask.run import distributed
    from supermask.run.train import run  # imported late so `--help` stays fast

    from supermask.run.config import parse_overrides

    cfg = train_config(args.config, parse_overrides(args.overrides), args.resume)
    if cfg.tasks is not None:
        return _tasks(cfg, args)
    try:
        summary = run(cfg, resume=args.resume, progress=not args.quiet)
    finally:
        distributed.shutdown()
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    kept = summary["params_kept"] / summary["params_total"]
    tuned = (f" and {summary['finetune_epochs']} of weight fine-tuning (the search alone: "
             f"{100 * summary['search_test_acc']:.2f}%)" if summary.get("finetune_epochs") else "")
    print(f"test accuracy {100 * summary['test_acc']:.2f}% after {summary['epochs']} epochs{tuned} "
          f"(best {100 * summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}); "
          f"{summary['method']} keeps {summary['params_kept']:,} of {summary['params_total']:,} weights ({100 * kept:.1f}%); "
          f"{summary['seconds']:.1f} s")
    print(f"run written to {summary['out_dir']}")
    return 0


def _tasks(cfg, args: argparse.Namespace) -> int:
    """tasks=N: the stream's tasks one after another, a line each."""
    from supermask.multi.tasks import train_tasks

    record = train_tasks(cfg, resume=args.resume, progress=not args.quiet)
    for t in record["per_task"]:
        print(f"task {t['task']}: test accuracy {100 * t['test_acc']:.2f}% ({t['dataset']}, {t['seconds']:.1f} s)")
    print(f"{record['tasks']} tasks over one random network ({record['method']}, weight_seed {record['weight_seed']}): "
          f"mean test accuracy {100 * record['mean_test_acc']:.2f}% with each task's own mask")
    print(f"runs written to {record['out_dir']}")
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
