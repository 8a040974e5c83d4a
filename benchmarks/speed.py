"""Training speed, side by side in one process: supermask's mask search against dense training (the floor) and
against the published approach (benchmarks/peer.py), per step and end to end, and N searches at once.

    python benchmarks/speed.py [--models conv2,conv4,conv4@0.25] [--batch 128] [--together 8]

Sections (each timed in interleaved rounds, so machine noise hits the contenders alike; ratios are what count):
  step      one training step on a fixed batch: dense, edge-popup, biprop, the peer's edge-popup; and the cost of
            one IWR step as a fraction of an epoch of edge-popup steps
  epoch     steps with real data (the CIFAR-10 copy in $SUPERMASK_DATA, augmented): supermask's batched pipeline
            against the peer's per-image DataLoader, extrapolated to a whole epoch
  together  N Conv-4 (width 0.25) searches: one group step against one step of each of N runs in turn, real data,
            for runs sharing their batches (a score-seed study) and runs with their own data seeds
  memory    peak memory of 3 steps of each contender, each in a fresh process (CPU: growth of the peak RSS;
            GPU: peak allocated)
Writes benchmarks/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402
from peer import peer_loader, peer_model  # noqa: E402

import supermask  # noqa: E402
from supermask.compat import keep_freed_memory  # noqa: E402
from supermask import data as data_lib  # noqa: E402
from supermask.run.config import make_config  # noqa: E402
from supermask.multi.together import Together, group_batches, per_run_losses, to_layout  # noqa: E402
from supermask.run.train import build, optimizer_for, place  # noqa: E402

CONTENDERS = ("dense", "edge-popup", "biprop", "peer")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _config(model: str, width: float, method: str, batch: int, device, score_seed: int = 0) -> "supermask.run.config.Config":
    base = "edge-popup" if method == "peer" else method
    return make_config({"model": model, "width": width, "method": base, "prune_rate": 0.5, "batch_size": batch,
                        "epochs": 1, "device": device.type, "dataset": "cifar10", "score_seed": score_seed})


class _Shape:  # the dataset facts `build` needs, without loading data for the synthetic-batch section
    num_classes, in_channels, image_size = 10, 3, 32


def make_model(model: str, width: float, method: str, batch: int, device, score_seed: int = 0):
    cfg = _config(model, width, method, batch, device, score_seed)
    if method == "peer":
        net = peer_model(supermask.build_model(model, width=width), 0.5).to(device)
        channels_last = False
    else:
        net = place(build(cfg, _Shape), cfg, device)
        channels_last = cfg.channels_last
    opt = optimizer_for(cfg, [p for p in net.parameters() if p.requires_grad])
    return cfg, net, opt, channels_last


def make_step(net, opt, device, channels_last: bool):
    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def interleaved(fns: dict, rounds: int, steps: int, device) -> dict[str, float]:
    """Median seconds per call of each function, timed in short blocks in rotating order."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fns[name]()  # refill the caches the others evicted
            for _ in range(steps):
                _sync(device)
                start = time.perf_counter()
                fns[name]()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_steps(model, width, batch, device, rounds, steps, contenders=CONTENDERS) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    nets = {m: make_model(model, width, m, batch, device) for m in contenders}
    fns = {}
    for m, (_, net, opt, cl) in nets.items():
        step = make_step(net, opt, device, cl)
        fns[m] = lambda step=step: step(x, y)
    median = interleaved(fns, rounds, steps, device)
    # IWR: one recycle step of the edge-popup net against an epoch (391 steps of 128) of its steps
    net = nets["edge-popup"][1]
    iwr = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        supermask.recycle_(net, 0.1)
        _sync(device)
        iwr.append(time.perf_counter() - start)
    epoch = math.ceil(50_000 / batch) * median["edge-popup"]
    return {"step_seconds": median, "images_per_second": {m: batch / s for m, s in median.items()},
            "x_dense": {m: median[m] / median["dense"] for m in contenders},
            **({"peer_over_supermask": {m: median["peer"] / median[m] for m in ("edge-popup", "biprop")}}
               if "peer" in contenders else {}),
            "iwr_step_seconds": statistics.median(iwr), "iwr_fraction_of_epoch": statistics.median(iwr) / epoch}


def bench_epoch(model, width, batch, device, ds, steps, rounds, workers) -> dict:
    """Real-data steps: supermask's pipeline (batched augmentation) against the peer's (per-image DataLoader)."""
    cfg, net, opt, cl = make_model(model, width, "edge-popup", batch, device)
    ours_step = make_step(net, opt, device, cl)
    _, pnet, popt, _ = make_model(model, width, "peer", batch, device)
    peer_step = make_step(pnet, popt, device, False)
    ours_iter = iter(_forever(lambda e: data_lib.train_batches(ds, batch, seed=0, epoch=e, augment=True, device=device)))
    loader = peer_loader(ds, batch, workers)
    peer_iter = iter(_forever(lambda e: ((x.to(device), y.to(device)) for x, y in loader)))

    def run(step, it):
        def go():
            for _ in range(steps):
                step(*next(it))
        return go

    median = interleaved({"supermask": run(ours_step, ours_iter), "peer": run(peer_step, peer_iter)}, rounds, 1, device)
    per_step = {k: v / steps for k, v in median.items()}
    steps_per_epoch = math.ceil(len(ds.train_y) / batch)
    return {"steps_timed": steps, "loader_workers": workers, "step_seconds": per_step,
            "epoch_seconds_extrapolated": {k: v * steps_per_epoch for k, v in per_step.items()},
            "peer_over_supermask": per_step["peer"] / per_step["supermask"]}


def _forever(epoch_batches):
    epoch = 0
    while True:
        yield from epoch_batches(epoch)
        epoch += 1


def bench_together(n, batch, device, ds, rounds, steps) -> dict:
    """n Conv-4 (width 0.25) searches: one group step against a step of each run in turn, both with real data."""
    out = {}
    for data_mode in ("shared batches", "own data seeds"):
        base = _config("conv4", 0.25, "edge-popup", batch, device)
        base.augment = True
        cfgs = [dataclasses.replace(base, score_seed=i, data_seed=0 if data_mode == "shared batches" else i)
                for i in range(n)]
        alone = [make_model("conv4", 0.25, "edge-popup", batch, device, c.score_seed) for c in cfgs]
        alone_iters = [iter(_forever(lambda e, c=c: data_lib.train_batches(ds, batch, seed=c.data_seed, epoch=e,
                                                                          augment=True, device=device)))
                       for c in cfgs]
        alone_steps = [make_step(net, opt, device, cl) for _, net, opt, cl in alone]

        def sequential():
            for step, it in zip(alone_steps, alone_iters):
                step(*next(it))

        fns = {"sequential": sequential}
        for forward in ("loop", "vmap"):
            models = [place(build(c, ds), c, device) for c in cfgs]
            template = place(supermask.build_model("conv4", width=0.25), base, device)
            group = Together(models, template, "edge-popup", forward)
            opt = optimizer_for(base, group.scores)
            it = iter(_forever(lambda e: group_batches(ds, cfgs, e, device)))

            def together(group=group, opt=opt, it=it):
                x, y = next(it)
                losses = per_run_losses(group(to_layout(x, base.channels_last)), y)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()

            fns[f"together ({forward})"] = together
        median = interleaved(fns, rounds, steps, device)
        out[data_mode] = {"seconds_per_step_of_all_runs": median,
                          "throughput_over_sequential": {k: median["sequential"] / v for k, v in median.items() if k != "sequential"}}
    return {"runs": n, "model": "conv4", "width": 0.25, **out}


def peak_memory(model, width, method, batch, device) -> float:
    """Peak memory (MiB) of 3 steps of one contender, measured in a fresh process."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import speed, torch; "
            f"print(speed._peak_here({model!r}, {width}, {method!r}, {batch}, {device.type!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_here(model, width, method, batch, device_type) -> float:
    device = torch.device(device_type)
    keep_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS, so imports' transient peaks do not count
    before = _status_kib("VmRSS")
    _, net, opt, cl = make_model(model, width, method, batch, device)
    step = make_step(net, opt, device, cl)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step(x, y)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (_status_kib("VmHWM") - before) / 1024


def _parse_models(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        name, _, width = item.partition("@")
        out.append((name, float(width) if width else 1.0))
    return out


def table(result: dict) -> str:
    lines = [f"# Training speed ({result['device']}, batch {result['batch']})", "",
             "Per step on a fixed batch (ms; x dense; the peer is the published approach, re-implemented):", "",
             "| model | dense | edge-popup | biprop | peer EP | EP x dense | Biprop x dense | peer / EP | IWR step, % of an epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        s, x = r["step"]["step_seconds"], r["step"]["x_dense"]
        lines.append(f"| {name} | {1e3 * s['dense']:.1f} | {1e3 * s['edge-popup']:.1f} | {1e3 * s['biprop']:.1f} | "
                     f"{1e3 * s['peer']:.1f} | {x['edge-popup']:.3f} | {x['biprop']:.3f} | "
                     f"{r['step']['peer_over_supermask']['edge-popup']:.2f} | {100 * r['step']['iwr_fraction_of_epoch']:.3f} |")
    if any("epoch" in r for r in result["models"].values()):
        lines += ["", "End to end with real data (s per epoch, extrapolated from timed steps):", "",
                  "| model | supermask | peer | peer / supermask |", "|---|---|---|---|"]
        for name, r in result["models"].items():
            if "epoch" in r:
                e = r["epoch"]["epoch_seconds_extrapolated"]
                lines.append(f"| {name} | {e['supermask']:.1f} | {e['peer']:.1f} | {r['epoch']['peer_over_supermask']:.2f} |")
    if "memory_mib" in result:
        lines += ["", "Peak memory of 3 steps, MiB (" + result["memory_kind"] + "):", "",
                  "| model | " + " | ".join(CONTENDERS) + " |", "|---|" + "---|" * len(CONTENDERS)]
        for name, mem in result["memory_mib"].items():
            lines.append(f"| {name} | " + " | ".join(f"{mem[m]:.0f}" for m in CONTENDERS) + " |")
    if "together" in result:
        t = result["together"]
        lines += ["", f"{t['runs']} Conv-4 (width 0.25) searches at once, throughput over {t['runs']} runs in turn:", "",
                  "| data | " + " | ".join(t["shared batches"]["throughput_over_sequential"]) + " |",
                  "|---|" + "---|" * len(t["shared batches"]["throughput_over_sequential"])]
        for mode in ("shared batches", "own data seeds"):
            lines.append(f"| {mode} | " + " | ".join(f"{v:.2f}x" for v in t[mode]["throughput_over_sequential"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    keep_freed_memory()  # as the command line does (every contender, the peer included, gets it)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="conv2,conv4,conv4@0.25", help="comma-separated NAME[@WIDTH]")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    ap.add_argument("--epoch-steps", type=int, default=20, help="real-data steps per timed block (0: skip)")
    ap.add_argument("--workers", type=int, default=2, help="the peer DataLoader's worker processes")
    ap.add_argument("--together", type=int, default=8, help="searches at once (0: skip)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--name", default="speed", help="results go to benchmarks/results/NAME.{json,md}")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    ds = data_lib.load_dataset("cifar10") if args.epoch_steps or args.together else None
    result = {"benchmark": "speed", "device": str(device), "batch": args.batch, "rounds": args.rounds,
              "steps_per_round": args.steps, "models": {}, "machine": machine()}
    for model, width in _parse_models(args.models):
        name = f"{model} w{width:g}"
        print(f"{name}: steps", flush=True)
        entry = {"step": bench_steps(model, width, args.batch, device, args.rounds, args.steps)}
        if args.epoch_steps:
            print(f"{name}: real-data steps", flush=True)
            entry["epoch"] = bench_epoch(model, width, args.batch, device, ds, args.epoch_steps, max(2, args.rounds // 2),
                                         args.workers)
        result["models"][name] = entry
    if not args.no_memory:
        print("peak memory", flush=True)
        result["memory_kind"] = ("peak allocated" if device.type == "cuda"
                                 else "growth of the process's peak RSS over the steps, model included")
        result["memory_mib"] = {f"{m} w{w:g}": {c: peak_memory(m, w, c, args.batch, device) for c in CONTENDERS}
                                for m, w in _parse_models(args.models)}
    if args.together:
        print(f"{args.together} searches at once", flush=True)
        result["together"] = bench_together(args.together, args.batch, device, ds, args.rounds, 2)
    out = HERE / "results" / args.name
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
