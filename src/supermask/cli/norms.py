"""`supermask norms`: per-layer norms of kept and pruned weights."""

from __future__ import annotations

import argparse

from supermask.cli.output import save_result

def run(args: argparse.Namespace) -> int:
    from supermask.analysis.norms import layer_norms
    from supermask.analysis.plots import norms_plot

    result = layer_norms(args.run_dir, dense_run=args.dense)
    out = save_result(args.out, "norms", result, norms_plot)
    print("kept, pruned: norms of the random weights W under and outside the mask; effective: of the weight the "
          "network computes with (W * M, or for Biprop alpha * sign(W) * M)")
    for r in result["layers"]:
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"norms written to {out}")
    return 0
