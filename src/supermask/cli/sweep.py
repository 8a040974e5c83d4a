"""`supermask sweep`: a grid of runs on local workers or Ray."""

from __future__ import annotations

import argparse
import sys

def run(args: argparse.Namespace) -> int:
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
