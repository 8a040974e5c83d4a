"""`supermask path`: test accuracy along a path between two runs' masks."""

from __future__ import annotations

import argparse

from supermask.cli.output import save_result

def run(args: argparse.Namespace) -> int:
    from supermask.analysis.paths import mask_path
    from supermask.analysis.plots import path_plot

    result = mask_path(args.run_a, args.run_b, steps=args.steps, device=args.device)
    out = save_result(args.out, "path", result, path_plot)
    for p in result["points"]:
        print(f"t={p['t']:.2f}  test accuracy {100 * p['test_acc']:.2f}%  Hamming to A {p['hamming_to_a']:.3f}")
    print(f"mask path written to {out}")
    return 0
