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


def train_config(config: str | None, overrides: dict, resume: bool):
    """The config `train` runs. `--resume` without a CONFIG continues the run in out_dir from its own config.yaml:
    the overrides given with it must then make the same run (`supermask.run.rundir`), which `run` checks."""
    from supermask.run.config import make_config
    from supermask.run.rundir import holds_run, recorded

    out_dir = overrides.get("out_dir")
    if config is None and resume and out_dir is not None and holds_run(out_dir):
        return make_config(recorded(out_dir).to_dict(), overrides)
    return make_config(config or DEFAULT_CONFIG, overrides)
