"""`supermask compare`: the mask landscape of finished runs."""

from __future__ import annotations

import argparse

from supermask.cli.output import print_landscape

def run(args: argparse.Namespace) -> int:
    from supermask.analysis.landscape import write_comparison

    summary = write_comparison(args.run_dirs, args.out, plots=not args.no_plots)
    print_landscape(summary)
    print(f"comparison written to {args.out}")
    return 0
