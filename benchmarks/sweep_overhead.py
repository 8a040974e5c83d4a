"""The cost of running a sweep through Ray against running its cells with local worker processes, side by side.

    python benchmarks/sweep_overhead.py [--cells 4] [--workers 2]

Both sweeps run the same tiny cells (digits, small conv net, 1 epoch) from scratch. Writes
benchmarks/results/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from supermask.multi.sweep import Cell, Sweep, run_sweep  # noqa: E402


def sweep_of(root: Path, cells: int, workers: int) -> Sweep:
    base = {"model": "small-conv", "width": 0.25, "epochs": 1}
    return Sweep("digits", [Cell(f"s{i}", {**base, "score_seed": i}, root / f"s{i}") for i in range(cells)], root,
                 workers=workers)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sweep_overhead.json"))
    args = ap.parse_args(argv)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, address in (("local workers", None), ("ray (local instance)", "local")):
            root = Path(tmp) / mode.split()[0]
            shutil.rmtree(root, ignore_errors=True)
            start = time.perf_counter()
            run_sweep(sweep_of(root, args.cells, args.workers), ray_address=address, progress=False)
            seconds[mode] = round(time.perf_counter() - start, 2)
            print(f"{mode}: {seconds[mode]:.1f} s for {args.cells} cells", flush=True)
    result = {"benchmark": "sweep_overhead", "cells": args.cells, "workers": args.workers, "seconds": seconds,
              "ray_over_local": round(seconds["ray (local instance)"] / seconds["local workers"], 3),
              "note": "Ray's time includes starting and stopping the local Ray instance", "machine": machine()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
