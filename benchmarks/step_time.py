"""Training-step time of Edge-Popup and Biprop against dense training of the same network.

The methods are timed in interleaved rounds in one process, so machine noise hits them alike, and the result is
reported as a ratio to dense. Usage:

    python benchmarks/step_time.py [--model conv4] [--width 1.0] [--batch 128] [--rounds 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import supermask  # noqa: E402

METHODS = ("dense", "edge-popup", "biprop")


def make_step(method: str, model_name: str, width: float, batch: int, prune_rate: float):
    model = supermask.convert(supermask.build_model(model_name, width=width), method, prune_rate)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prune-rate", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method per round, after one untimed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    args = ap.parse_args(argv)

    steps = {m: make_step(m, args.model, args.width, args.batch, args.prune_rate) for m in METHODS}
    for step in steps.values():  # warm-up: allocator, kernels
        step(); step()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        # Short blocks per method in a rotating order, so drift and ordering hit all alike; the untimed first
        # step of a block refills the caches the other methods evicted, as consecutive steps of a real run find them.
        for m in METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]:
            steps[m]()
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[m]()
                times[m].append(time.perf_counter() - start)
    median = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "benchmark": "step_time", "model": args.model, "width": args.width, "batch": args.batch,
        "prune_rate": args.prune_rate, "device": "cpu", "rounds": args.rounds, "steps_per_round": args.steps,
        "median_step_seconds": median, "ratio_to_dense": {m: median[m] / median["dense"] for m in METHODS},
        "all_step_seconds": times, "machine": machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model} width {args.width} batch {args.batch}, CPU ({torch.get_num_threads()} threads)")
    print("| method | step (ms) | x dense |\n|---|---|---|")
    for m in METHODS:
        print(f"| {m} | {1000 * median[m]:.1f} | {median[m] / median['dense']:.3f} |")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
