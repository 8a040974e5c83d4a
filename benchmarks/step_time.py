"""Training-step time of Edge-Popup and Biprop against dense training of the same network (and the published
approach), as ratios measured side by side in one process: the step section of benchmarks/speed.py alone.

    python benchmarks/step_time.py [--model conv4] [--width 1.0] [--batch 128] [--rounds 8] [--steps 3]

Any registered model on 32-pixel images. Models with attention (`--model vit`) are timed without the peer: it swaps
layers for its own, and attention bypasses the swapped out_proj (it reads out_proj.weight, not its forward).
Writes benchmarks/results/step_time.json (step_time_<model>.json for other models than conv4).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from speed import CONTENDERS, bench_steps  # noqa: E402

from supermask import build_model  # noqa: E402
from supermask.compat import keep_freed_memory  # noqa: E402


def main(argv=None) -> dict:
    keep_freed_memory()  # as the command line does (every contender, the peer included, gets it)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/step_time[_MODEL].json")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / f"step_time{'' if args.model == 'conv4' else '_' + args.model}.json")
    attention = any(isinstance(m, nn.MultiheadAttention) for m in build_model(args.model, width=args.width).modules())
    contenders = tuple(c for c in CONTENDERS if not (attention and c == "peer"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"benchmark": "step_time", "model": args.model, "width": args.width, "batch": args.batch,
              "device": str(device), **bench_steps(args.model, args.width, args.batch, device, args.rounds, args.steps, contenders),
              "machine": machine()}
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model} width {args.width:g} batch {args.batch}, {device}")
    print("| contender | step (ms) | x dense |\n|---|---|---|")
    for name, seconds in result["step_seconds"].items():
        print(f"| {name} | {1000 * seconds:.1f} | {result['x_dense'][name]:.3f} |")
    return result


if __name__ == "__main__":
    main()
