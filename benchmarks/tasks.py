"""Per-task masks over one random network (SupSup; issue 25) on this machine: benchmarks/results/tasks_cpu.{json,md,png}.

    SUPERMASK_DATA=../shared/datasets python benchmarks/tasks.py --threads 1                 # every stage not yet run
    SUPERMASK_DATA=../shared/datasets python benchmarks/tasks.py --stages pm10 --threads 1   # one stage

Stages; each is written into the JSON when it finishes and skipped when the JSON has it (--redo runs it again). The
runs go under --runs (default runs/tasks/) and a killed stage resumes its runs there.
- memory: peak memory (the max RSS of a fresh process) of training a stream of 10 and of 100 tasks, and of inferring a
  batch's task over them. The tasks are small (fc1024 at width 0.25 on the first 1,000 training and 500 test images
  of MNIST, permuted; 1 epoch), so that what varies is their number.
- pm10-threshold: permuted MNIST, 10 tasks, the supsup-permuted-mnist recipe (fc1024 with 500 outputs, the published
  threshold masks, RMSprop 1e-4, 1000 steps a task): each
  task's accuracy with its own mask (the task given) and with its task inferred (one-shot at batch 1, 8, 64 and 128;
  binary at 8 and 128; min-entropy at 1, 8 and 128), and the bytes a task takes in the .smask against its entropy
  bound and the paper's storage.
- pm10-topk: the same with top-k masks keeping half of each layer (method=edge-popup, exact counts).
- pm10-10-outputs: pm10-topk with 10 outputs, no superfluous ones (outputs=null): the ablation.
- pm100: 100 tasks of the recipe (threshold masks), 1 epoch (469 steps) a task (half the recipe's budget, for this
  machine): the same, inferred at batch 128 and 8.
- split: split CIFAR-10 (5 tasks of 2 classes), ResNet-18 at width 0.25 with the supsup-split-cifar10 recipe for
  --split-epochs epochs a task: each task's accuracy with its mask against a dense ResNet-18 of the same width trained
  on that task alone with the same optimizer.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from supermask.run.checkpoint import atomic_write_text, read_json, write_json  # noqa: E402

STAGES = ("memory", "pm10-threshold", "pm10-topk", "pm10-10-outputs", "pm100", "split")
# the permuted-MNIST stages: tasks, epochs a task, and what they change in the recipe (whose mask is the threshold)
PM_STAGES = {"pm10-threshold": (10, 3, {"method": "threshold"}), "pm10-topk": (10, 3, {"method": "edge-popup"}),
             "pm10-10-outputs": (10, 3, {"method": "edge-popup", "outputs": None}), "pm100": (100, 1, {})}
PM_BATCHES = {"pm10-topk": [(1, "one-shot", 200), (8, "one-shot", 800), (64, "one-shot", 2560), (128, "one-shot", 2560),
                       (8, "binary", 800), (128, "binary", 2560), (1, "min-entropy", 200), (8, "min-entropy", 800),
                       (128, "min-entropy", 2560)],
              "pm10-10-outputs": [(1, "one-shot", 200), (8, "one-shot", 800), (128, "one-shot", 2560),
                                  (128, "binary", 2560), (8, "min-entropy", 800), (128, "min-entropy", 2560)],
              "pm10-threshold": [(1, "one-shot", 200), (8, "one-shot", 800), (128, "one-shot", 2560),
                                 (128, "binary", 2560), (8, "min-entropy", 800), (128, "min-entropy", 2560)],
              "pm100": [(8, "one-shot", 96), (128, "one-shot", 1024), (128, "binary", 512), (8, "min-entropy", 96),
                        (128, "min-entropy", 1024)]}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kilobytes


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"tasks.py child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_mnist(folder: Path, data_dir: str | None) -> Path:
    """MNIST's first 1,000 training and 500 test images as IDX files under folder/mnist; their md5s are registered
    in this process (the child that reads them)."""
    from supermask import data
    from supermask.data import load_dataset

    full = load_dataset("mnist", data_dir, download=False)
    arrays = {"train-images-idx3-ubyte": full.train_x[:1000, 0].numpy(), "train-labels-idx1-ubyte": full.train_y[:1000].numpy(),
              "t10k-images-idx3-ubyte": full.test_x[:500, 0].numpy(), "t10k-labels-idx1-ubyte": full.test_y[:500].numpy()}
    (folder / "mnist").mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        a = a.astype("uint8")
        raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
        (folder / "mnist" / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
        data.MNIST_MD5[stem] = hashlib.md5(raw).hexdigest()
    return folder


def child(argv: list[str]) -> None:
    """What a fresh process measures: `train N OUT DATA` or `infer FILE DATA`, printing its peak memory."""
    import torch

    from supermask.core.superpose import Superposition  # noqa: F401
    from supermask.run.config import make_config

    kind, *rest = argv
    torch.set_num_threads(1)
    if kind == "train":
        n, out, data_dir = int(rest[0]), rest[1], rest[2]
        folder = small_mnist(Path(out + "-data"), data_dir or None)
        from supermask.multi.tasks import train_tasks

        cfg = make_config("supsup-permuted-mnist", {"tasks": n, "epochs": 1, "width": 0.25, "data_dir": str(folder),
                                                   "out_dir": out, "threads": 1})
        start = time.perf_counter()
        record = train_tasks(cfg, resume=True, progress=False)
        print(json.dumps({"tasks": n, "peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - start, 1),
                          "mean_test_acc": record["mean_test_acc"]}))
    else:
        from supermask.export.multitask import load_superposition

        path, data_dir = rest[0], rest[1]
        folder = small_mnist(Path(path + "-data"), data_dir or None)
        from supermask.data import eval_batches, load_dataset
        from supermask.data.task_streams import task_dataset

        header, sup = load_superposition(path)
        x, _ = next(eval_batches(task_dataset("permuted-mnist", load_dataset("mnist", folder), 1), 128))
        guess = sup.infer(x, "one-shot")
        masks_bytes = sum(b.numel() for b in sup.masks.values())
        print(json.dumps({"tasks": sup.tasks, "peak_rss_mb": peak_rss_mb(), "packed_mask_mb": round(masks_bytes / 2**20, 2),
                          "float_masks_would_be_mb": round(32 * masks_bytes / 2**20, 1), "inferred": guess}))


def stage_memory(runs: Path, data_dir: str | None) -> dict:
    from supermask.export.multitask import export_tasks

    rows = []
    for n in (10, 100):
        out = runs / f"memory-{n}"
        trained = _child(["train", str(n), str(out), data_dir or ""])
        report = export_tasks(out, runs / f"memory-{n}.smask")
        inferred = _child(["infer", str(runs / f"memory-{n}.smask"), data_dir or ""])
        rows.append({"tasks": n, "train_peak_rss_mb": trained["peak_rss_mb"], "train_seconds": trained["seconds"],
                     "infer_peak_rss_mb": inferred["peak_rss_mb"], "packed_masks_mb": inferred["packed_mask_mb"],
                     "float32_masks_would_be_mb": inferred["float_masks_would_be_mb"], "smask_bytes": report["bytes"],
                     "mean_test_acc": trained["mean_test_acc"]})
    return {"what": "fc1024 at width 0.25, permuted MNIST's first 1,000 training and 500 test images, 1 epoch a task; "
                    "peak RSS of a fresh process that trains the stream, and of one that loads the .smask and infers "
                    "one batch of 128 (one-shot)", "rows": rows}


def stage_pm(name: str, runs: Path, data_dir: str | None, threads: int) -> dict:
    from supermask.export.multitask import evaluate_inferred, export_tasks
    from supermask.multi.tasks import train_tasks
    from supermask.run.config import make_config

    tasks, epochs, change = PM_STAGES[name]
    out = runs / name
    cfg = make_config("supsup-permuted-mnist", {"tasks": tasks, "epochs": epochs, "out_dir": str(out), **change,
                                               "threads": threads, **({"data_dir": data_dir} if data_dir else {})})
    start = time.perf_counter()
    record = train_tasks(cfg, resume=True, progress=False)
    train_seconds = sum(t["seconds"] for t in record["per_task"])
    size = export_tasks(out, runs / f"{name}.smask")
    inferred = []
    for batch, how, images in PM_BATCHES[name]:
        t0 = time.perf_counter()
        r = evaluate_inferred(runs / f"{name}.smask", how=how, batch_size=batch, images=images, data_dir=data_dir)
        inferred.append({"batch_size": batch, "infer": how, "images_per_task": images,
                         "task_inferred": r["task_inferred"], "test_acc": r["test_acc"],
                         "per_task_inferred": [t["task_inferred"] for t in r["per_task"]],
                         "per_task_acc": [t["test_acc"] for t in r["per_task"]],
                         "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name}: batch {batch} {how}: task found {r['task_inferred']:.4f}, accuracy {r['test_acc']:.4f}",
              file=sys.stderr)
    outputs = "10 outputs (no superfluous ones)" if "outputs" in change else "500 outputs, 10 of them labels"
    outputs += ", threshold masks (1[S >= 0])" if cfg.method == "threshold" else ", top-k masks (half of each layer)"
    budget = f"{epochs} epoch(s) of at most {cfg.max_steps} steps in all" if cfg.max_steps else f"{epochs} epoch(s)"
    return {"what": f"permuted MNIST, {tasks} tasks, fc1024 with {outputs}, the supsup-permuted-mnist recipe with "
                    f"{budget} a task; inference on the first images_per_task test images of each task",
            "tasks": tasks, "epochs_per_task": epochs, "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "per_task_acc_task_given": [t["test_acc"] for t in record["per_task"]],
            "mean_acc_task_given": record["mean_test_acc"], "inferred": inferred,
            "size": {k: size[k] for k in ("bytes", "bytes_per_task", "mask_bytes_per_task", "entropy_bytes_per_task",
                                          "sparse_int16_bytes_per_task", "dense_float32_bytes")}}


def stage_split(runs: Path, data_dir: str | None, threads: int, epochs: int) -> dict:
    from supermask.multi.tasks import train_tasks
    from supermask.run.config import make_config

    common = {"width": 0.25, "epochs": epochs, "threads": threads, **({"data_dir": data_dir} if data_dir else {})}
    supsup = train_tasks(make_config("supsup-split-cifar10", {**common, "out_dir": str(runs / "split-supsup")}),
                         resume=True, progress=False)
    # the dense reference: a network of its own per task, its weights trained with the same optimizer and schedule
    dense = train_tasks(make_config("supsup-split-cifar10", {**common, "method": "dense",
                                                            "out_dir": str(runs / "split-dense")}),
                        resume=True, progress=False)
    return {"what": f"split CIFAR-10 (5 tasks of 2 classes, the JPEG copy), ResNet-18 at width 0.25, Adam 1e-3 cosine, "
                    f"{epochs} epochs a task; SupSup (a mask per task over one random network, 50% pruned) against a "
                    "dense network trained on each task alone", "epochs_per_task": epochs,
            "supsup": [t["test_acc"] for t in supsup["per_task"]], "dense": [t["test_acc"] for t in dense["per_task"]],
            "supsup_seconds": round(sum(t["seconds"] for t in supsup["per_task"]), 1),
            "dense_seconds": round(sum(t["seconds"] for t in dense["per_task"]), 1)}


def markdown(result: dict) -> str:
    s = result["stages"]
    lines = ["# Per-task masks over one random network (SupSup), CPU", "",
             f"Machine: {result['machine']['cpu']}, torch {result['machine']['torch']}. "
             "Written by `benchmarks/tasks.py`.", ""]
    for name in PM_STAGES:
        if name not in s:
            continue
        r = s[name]
        lines += [f"## Permuted MNIST, {r['tasks']} tasks ({r['epochs_per_task']} epoch(s) a task, `{name}`)", "",
                  r["what"] + ".", "",
                  f"- Task given: mean accuracy {100 * r['mean_acc_task_given']:.2f}% (lowest task "
                  f"{100 * min(r['per_task_acc_task_given']):.2f}%); training {r['train_seconds']:.0f} s in all.",
                  f"- Storage: {r['size']['bytes_per_task']:,.0f} bytes a task (masks {r['size']['mask_bytes_per_task']:,.0f}, "
                  f"entropy bound {r['size']['entropy_bytes_per_task']:,.0f}); the paper's 16-bit sparse indices: "
                  f"{r['size']['sparse_int16_bytes_per_task']:,.0f}; the dense float32 network: "
                  f"{r['size']['dense_float32_bytes']:,}.", "",
                  "| inference | batch | images a task | task found | accuracy (task inferred) | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| {i['infer']} | {i['batch_size']} | {i['images_per_task']} | {100 * i['task_inferred']:.2f}% | "
                  f"{100 * i['test_acc']:.2f}% | {i['seconds']:.0f} |" for i in r["inferred"]]
        lines.append("")
    if "split" in s:
        r = s["split"]
        lines += ["## Split CIFAR-10", "", r["what"] + ".", "", "| task | SupSup | dense, task alone |", "|---|---|---|"]
        lines += [f"| {t} | {100 * a:.2f}% | {100 * b:.2f}% |" for t, (a, b) in enumerate(zip(r["supsup"], r["dense"]))]
        lines += [f"| mean | {100 * sum(r['supsup']) / len(r['supsup']):.2f}% | {100 * sum(r['dense']) / len(r['dense']):.2f}% |", ""]
    if "memory" in s:
        r = s["memory"]
        lines += ["## Memory against the number of tasks", "", r["what"] + ".", "",
                  "| tasks | training peak RSS | inference peak RSS | masks, bit-packed | as float32 they would be | .smask |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {m['tasks']} | {m['train_peak_rss_mb']} MB | {m['infer_peak_rss_mb']} MB | {m['packed_masks_mb']} MB | "
                  f"{m['float32_masks_would_be_mb']} MB | {m['smask_bytes']:,} B |" for m in r["rows"]]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    s = result["stages"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for name, style in (("pm10-threshold", "o-"), ("pm10-topk", "^:"), ("pm10-10-outputs", "s--"), ("pm100", ".-")):
        if name in s:
            r = s[name]
            ax.plot(range(r["tasks"]), [100 * a for a in r["per_task_acc_task_given"]], style, label=f"{name}, task given")
            best = max(r["inferred"], key=lambda i: (i["batch_size"], i["infer"] == "one-shot"))
            ax.plot(range(r["tasks"]), [100 * a for a in best["per_task_acc"]], style, alpha=0.5,
                    label=f"{name}, inferred ({best['infer']}, batch {best['batch_size']})")
    ax.set(xlabel="task", ylabel="test accuracy (%)", title="Permuted MNIST, fc1024")
    ax = axes[1]
    for name in PM_STAGES:
        if name in s:
            for how in ("one-shot", "binary", "min-entropy"):
                pts = sorted((i["batch_size"], 100 * i["task_inferred"]) for i in s[name]["inferred"] if i["infer"] == how)
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{name}, {how}")
    ax.set(xscale="log", xlabel="batch size", ylabel="batches whose task was found (%)", title="Task inference")
    ax = axes[2]
    if "split" in s:
        r = s["split"]
        t = range(len(r["supsup"]))
        ax.bar([i - 0.2 for i in t], [100 * a for a in r["supsup"]], 0.4, label="SupSup (one network, a mask a task)")
        ax.bar([i + 0.2 for i in t], [100 * a for a in r["dense"]], 0.4, label="dense, a network a task")
        ax.set(xlabel="task", ylabel="test accuracy (%)", title="Split CIFAR-10, ResNet-18 w0.25", ylim=(50, 100))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        elif not ax.lines and not ax.patches:
            ax.set_axis_off()  # a stage not run yet
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--redo", action="store_true", help="run the stages given again, though the JSON has them")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-epochs", type=int, default=5)
    ap.add_argument("--data-dir", help="default: $SUPERMASK_DATA")
    ap.add_argument("--runs", default="runs/tasks")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.results) / "tasks_cpu.json"
    result = read_json(out) if out.is_file() else {"benchmark": "tasks", "stages": {}}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    for name in args.stages.split(","):
        if name not in STAGES:
            ap.error(f"unknown stage {name!r}: expected some of {', '.join(STAGES)}")
        if name in result["stages"] and not args.redo:
            continue
        start = time.perf_counter()
        if name == "memory":
            stage = stage_memory(runs, args.data_dir)
        elif name == "split":
            stage = stage_split(runs, args.data_dir, args.threads, args.split_epochs)
        else:
            stage = stage_pm(name, runs, args.data_dir, args.threads)
        result["stages"][name] = {**stage, "stage_seconds": round(time.perf_counter() - start, 1)}
        result["machine"] = machine()
        write_json(out, result)
        atomic_write_text(out.with_suffix(".md"), markdown(result))
        plot(result, out.with_suffix(".png"))
        print(f"stage {name} done", file=sys.stderr)


if __name__ == "__main__":
    main()
