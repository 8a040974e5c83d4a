"""Pairwise comparison of many masks of a Conv-6-sized network (2.26 M weights): packing and all pairs.

    python benchmarks/compare_speed.py [--masks 15] [--model conv6]

Writes benchmarks/results/compare_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import supermask  # noqa: E402
from supermask.core.convert import weight_tensors  # noqa: E402
from supermask.analysis.landscape import TOTAL, pack, pair_counts  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=int, default=15)
    ap.add_argument("--model", default="conv6")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compare_speed.json"))
    args = ap.parse_args(argv)
    shapes = {n: t.shape for n, t in weight_tensors(supermask.build_model(args.model)).items()}
    g = torch.Generator().manual_seed(0)
    masks = [{n: torch.rand(s, generator=g) < 0.5 for n, s in shapes.items()} for _ in range(args.masks)]
    start = time.perf_counter()
    packed = [pack(m) for m in masks]
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    totals = [pair_counts(a, b)[TOTAL].jaccard for i, a in enumerate(packed) for b in packed[i + 1:]]
    pairs_s = time.perf_counter() - start
    result = {"benchmark": "compare_speed", "model": args.model, "weights": sum(s.numel() for s in shapes.values()),
              "masks": args.masks, "pairs": len(totals), "pack_seconds": round(pack_s, 3),
              "pairs_seconds": round(pairs_s, 3), "mean_jaccard": sum(totals) / len(totals), "machine": machine()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.masks} masks of {result['weights']:,} weights: packed in {pack_s:.2f} s, "
          f"{len(totals)} pairs compared in {pairs_s:.2f} s")
    return result


if __name__ == "__main__":
    main()
