"""`supermask study`: runs that differ only in their seeds, then their comparison."""

from __future__ import annotations

import argparse

from supermask.cli.output import print_landscape

def run(args: argparse.Namespace) -> int:
    from supermask.multi.study import run_study
    from supermask.run.config import parse_overrides

    summary = run_study(args.config, parse_overrides(args.overrides), score_seeds=args.score_seeds,
                        weight_seeds=args.weight_seeds, progress=not args.quiet,
                        together=args.together, forward=args.forward, retrain=args.retrain)
    print_landscape(summary)
    return 0
