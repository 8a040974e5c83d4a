"""Many tasks' networks in one `.smask` file: one seed, a mask per task (format version 3), and task inference over
them.

`export_tasks` writes a run of many tasks (`supermask.multi.tasks`): the header of its first task, whose rebuild keys
every task shares (so one seed rebuilds the weights of all), with `layers` and `tensors` empty and `tasks` listing
each task's own masks, tensors, accuracy, data checksum and class names. `load(path, task=t)` rebuilds one task's
network; `evaluate_inferred` measures the tasks with their identity inferred (`supermask.core.superpose`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from supermask.core.convert import masked_layers, random_weight
from supermask.core.superpose import INFERENCE, Superposition, pack
from supermask.data.base import Dataset
from supermask.errors import ConfigError
from supermask.export import codec
from supermask.export.smask import (HEADER, TASKS_VERSION, _blob, _build, _conform, _validate, atomic_write_bytes,
                                    encode_run, file_dataset, load, pack as pack_file, read, size_report, task_view)
from supermask.run.checkpoint import read_json
from supermask.run.files import SUMMARY, TASKS_FILE
from supermask.run.rundir import task_runs

SUPERPOSABLE = ("edge-popup", "threshold")  # the methods whose network is W * M, M a 0/1 mask
# what differs between the tasks of one stream (each task's `task` index too); every other header field is shared
PER_TASK = ("layers", "tensors", "test_acc", "dataset_sha256", "eval_split_sha256", "task", "version", "preprocessing")


def export_tasks(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """Write every task's network of the finished run of many tasks in `run_dir` into one `.smask` file; returns
    the size report of `export_run` plus the size per task, its entropy bound, and the sparse 16-bit indices a
    task's mask would take as the SupSup paper stores them."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / TASKS_FILE)
    if record["finished"] != record["tasks"]:
        raise ConfigError(f"{run_dir} has finished {record['finished']} of its {record['tasks']} tasks: resume it "
                          "(supermask train --resume out_dir=...) before exporting")
    payload = bytearray()
    shared, tasks, sizes = None, [], []
    for t, where in enumerate(task_runs(run_dir)):
        header, size = encode_run(where, payload)
        sizes.append(size)
        common = {k: v for k, v in header.items() if k not in PER_TASK}
        common["preprocessing"] = {k: v for k, v in header.get("preprocessing", {}).items() if k != "classes"}
        if shared is None:
            shared = common
        elif common != shared:
            keys = sorted(k for k in set(common) | set(shared) if common.get(k) != shared.get(k))
            raise ConfigError(f"task {t} of {run_dir} rebuilds another network than task 0 ({', '.join(keys)} differ)")
        tasks.append({"layers": header["layers"], "tensors": header["tensors"], "test_acc": header["test_acc"],
                      "dataset": read_json(where / SUMMARY)["dataset"],
                      **({"dataset_sha256": header["dataset_sha256"]} if "dataset_sha256" in header else {}),
                      "classes": header["preprocessing"]["classes"]})
    header = {**shared, "version": TASKS_VERSION, "layers": [], "tensors": [], "test_acc": None, "tasks": tasks,
              "payload_length": len(payload)}
    header.pop("task", None)
    if not header["preprocessing"]:
        del header["preprocessing"]
    else:  # the shared fields, and task 0's class names (each task's are in its entry)
        header["preprocessing"] = {**header["preprocessing"], "classes": tasks[0]["classes"]}
    data = pack_file(header, payload)
    atomic_write_bytes(path, data)
    total = {k: sum(s[k] for s in sizes) for k in ("mask_bytes", "entropy_bytes", "mask_head_bytes", "kept")}
    report = size_report(path, data, {**total, "mask_layers": sizes[0]["mask_layers"],
                                      "dense_float32_bytes": sizes[0]["dense_float32_bytes"]})
    n = len(tasks)
    return {**report, "tasks": n, "bytes_per_task": round(len(data) / n, 1),
            "mask_bytes_per_task": round(total["mask_bytes"] / n, 1),
            "entropy_bytes_per_task": round(total["entropy_bytes"] / n, 1),
            # SupSup's storage: each kept weight's index as a 16-bit integer
            "sparse_int16_bytes_per_task": round(2 * total["kept"] / n, 1)}


def load_superposition(path: str | Path) -> tuple[dict[str, Any], Superposition]:
    """(header, superposition) of a `.smask` file of many tasks whose networks are W * M (`SUPERPOSABLE`): the seed's weights and every task's
    masks, bit-packed. Refused where the tasks' networks differ in more than their masks (their own BatchNorm
    statistics or biases, weights changed by IWR or IteRand, Biprop's per-task alpha): a superposition is of masks
    over one set of weights."""
    header, payload = read(path)
    _conform(header, HEADER, f"{path}: header")
    if "tasks" not in header:
        raise ConfigError(f"{path} holds one network: task=infer chooses among the tasks of a file of many tasks")
    if header["method"] not in SUPERPOSABLE:
        raise ConfigError(f"task=infer superposes masks of the weights themselves, W * M (SupSup: "
                          f"{' or '.join(SUPERPOSABLE)}); {path}'s method is {header['method']}, whose tasks scale or "
                          "sign their weights each their own way")
    tasks = header["tasks"]
    tensors = [[bytes(_blob(payload, t["data"])) for t in task["tensors"]] for task in tasks]
    if any(t != tensors[0] for t in tensors):
        raise ConfigError(f"{path}'s tasks hold their own tensors (BatchNorm statistics or biases): task inference "
                          "superposes masks over one network, as the paper's fully-connected networks are")
    if any("changed" in e for task in tasks for e in task["layers"]):
        raise ConfigError(f"{path} has tasks whose kept weights were changed (IWR or IteRand): their superposition "
                          "is not of masks over one set of weights")
    model = load(path, task=0)
    view = task_view(header, 0, str(path))
    skeleton = _build(view, str(path))
    _validate(view, payload, skeleton, str(path))
    layers = {name: (layer, p) for name, layer, p in masked_layers(skeleton)}
    head = "wide" if header["version"] == 1 else "compact"
    weights, masks = {}, {}
    for j, e in enumerate(tasks[0]["layers"]):
        layer, p = layers[e["name"]]
        key = f"{e['name']}.{p.param_name}" if e["name"] else p.param_name
        weights[key] = random_weight(layer, p).detach().contiguous()
        n = weights[key].numel()
        rows = torch.empty((len(tasks), (n + 7) // 8), dtype=torch.uint8)  # every task's bits of this weight, one block
        for i, task in enumerate(tasks):
            entry = task["layers"][j]
            if entry["name"] != e["name"]:
                raise ConfigError(f"{path}: task {i} lists its layers in another order than task 0")
            bits = codec.decode(_blob(payload, entry["mask"]), n, head)
            if int(bits.sum()) != entry["kept"]:
                raise ConfigError(f"{path}: task {i}'s layer {e['name']} keeps {int(bits.sum())} weights, its header "
                                  f"{entry['kept']}")
            rows[i] = pack(bits)
        masks[key] = rows
    return header, Superposition(model, weights, masks)


def evaluate_inferred(path: str | Path, *, how: str = "one-shot", batch_size: int = 128, images: int | None = None,
                      device: str = "cpu", data_dir: str | None = None,
                      stream: Sequence[Dataset] | None = None, infer_from: int | None = None) -> dict[str, Any]:
    """Each task's test images in batches of `batch_size` (the first `images` of them, or all), the batch's task
    inferred (`how`: one-shot or binary) from the whole batch, or from its first `infer_from` images (the published
    scripts' `data_to_repeat: 1`), then the batch classified by the inferred task's network. Returns per task and
    overall: the fraction of batches whose task was inferred right, the accuracy of the inferred networks
    (`test_acc`), and the accuracy counting every image of a wrongly inferred batch wrong (`test_acc_found_only`, the
    published scripts' measure).
    The tasks' data is the file's task stream's, or `stream` (the user's own datasets, one a task)."""
    from supermask.data import eval_batches

    if how not in INFERENCE:
        raise ConfigError(f"unknown infer {how!r}: expected one of {', '.join(INFERENCE)}")
    if batch_size < 1 or (images is not None and images < 1) or (infer_from is not None and infer_from < 1):
        raise ConfigError(f"batch_size ({batch_size}), images ({images}) and infer_from ({infer_from}) must be >= 1")
    header, sup = load_superposition(path)
    if stream is not None and len(stream) != sup.tasks:
        raise ConfigError(f"{path} holds {sup.tasks} tasks, and the stream {len(stream)} datasets")
    per_task = []
    for t in range(sup.tasks):
        ds = stream[t] if stream is not None else file_dataset(task_view(header, t, str(path)), path, None, data_dir)
        found = right = right_found = seen = batches = 0
        for x, y in eval_batches(ds, batch_size, device=torch.device(device)):
            if images is not None and seen >= images:
                break
            limit = len(y) if images is None else images - seen
            x, y = x[:limit], y[:limit]
            guess = sup.infer(x if infer_from is None else x[:infer_from], how)
            found += guess == t
            correct = int((sup.task_logits(x, guess).argmax(1) == y).sum())
            right += correct
            right_found += correct if guess == t else 0  # the published scripts count a wrongly inferred batch wrong
            seen += len(y)
            batches += 1
        per_task.append({"task": t, "batches": batches, "images": seen, "task_inferred": found / batches,
                         "test_acc": right / seen, "test_acc_found_only": right_found / seen,
                         "test_acc_task_given": header["tasks"][t]["test_acc"]})
    mean = {k: sum(r[k] for r in per_task) / len(per_task) for k in ("task_inferred", "test_acc", "test_acc_found_only")}
    return {"file": str(path), "infer": how, "batch_size": batch_size,
            **({"infer_from": infer_from} if infer_from is not None else {}), "tasks": sup.tasks, **mean,
            "per_task": per_task}
