"""Conv-4 at width 0.25, 50% pruned, 10 epochs on CIFAR-10: Edge-Popup, Biprop and dense, one seed each.

    SUPERMASK_DATA=../shared/datasets python benchmarks/foundation_accuracy.py [--epochs 10] [--out-dir runs/foundation]

Writes benchmarks/results/foundation_accuracy.json (the runs' summaries and the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from supermask.config import make_config  # noqa: E402
from supermask.train import run  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--prune-rate", type=float, default=0.5)
    ap.add_argument("--methods", default="edge-popup,biprop,dense")
    ap.add_argument("--out-dir", default="runs/foundation")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "foundation_accuracy.json"))
    args = ap.parse_args(argv)
    rows = []
    for method in args.methods.split(","):
        out_dir = Path(args.out_dir) / f"conv4-w{args.width:g}-{method}-p{args.prune_rate:g}-e{args.epochs}"
        cfg = make_config("conv4", {"method": method, "width": args.width, "prune_rate": args.prune_rate,
                                    "epochs": args.epochs, "out_dir": str(out_dir)})
        summary = run(cfg, resume=True, progress=sys.stderr.isatty())
        rows.append(summary)
        print(f"{method:12s} test_acc {100 * summary['test_acc']:.2f}%  best {100 * summary['best_test_acc']:.2f}%  "
              f"{summary['seconds']:.0f} s  ({summary['dataset_source']})", flush=True)
    Path(args.out).write_text(json.dumps({"benchmark": "foundation_accuracy", "runs": rows, "machine": machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
