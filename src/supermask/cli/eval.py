"""`supermask eval`: a run directory or a .smask file, measured again on its test set (a file of many tasks: one
task's network with task=N, or every task with its identity inferred with task=infer)."""

from __future__ import annotations

import argparse
import json

from supermask.errors import SupermaskError

DATA_KEYS = {"dataset", "data_dir"}
# task=infer's: how, the batch a task is inferred from, images per task, the batch's first images the task is read off
INFER_KEYS = {"infer", "batch_size", "images", "infer_from"}


def run(args: argparse.Namespace) -> int:
    from supermask.export.smask import evaluate_smask
    from supermask.run.config import parse_overrides
    from supermask.run.train import evaluate_run

    data = parse_overrides(args.overrides)
    smask = args.run_dir.endswith(".smask")
    allowed = DATA_KEYS | ({"task"} | INFER_KEYS if smask else set())
    if set(data) - allowed:
        raise SupermaskError(f"eval takes only {', '.join(f'{k}=' for k in sorted(allowed))}, not "
                             f"{sorted(set(data) - allowed)[0]}=")
    task = data.pop("task", None)
    if task == "infer":
        result = _inferred(args, data)
    elif set(data) & INFER_KEYS:
        raise SupermaskError(f"{', '.join(sorted(set(data) & INFER_KEYS))}= apply to task=infer")
    elif task is not None and (type(task) is not int or task < 0):
        raise SupermaskError(f"task={task!r} must be a task's index (0, 1, ...) or infer")
    else:
        where = {k: str(v) for k, v in data.items() if v is not None}
        result = (evaluate_smask(args.run_dir, device=args.device, task=task, **where) if smask
                  else evaluate_run(args.run_dir, device=args.device, **where))
    print(json.dumps(result, indent=2))
    return 0


def _inferred(args: argparse.Namespace, data: dict) -> dict:
    from supermask.export.multitask import evaluate_inferred

    if "dataset" in data:
        raise SupermaskError("task=infer reads each task's data from the file's task stream: dataset= does not apply")
    for key in ("batch_size", "images", "infer_from"):
        if key in data and (type(data[key]) is not int or data[key] < 1):
            raise SupermaskError(f"{key}={data[key]!r} must be a whole number >= 1")
    device = "cpu" if args.device == "auto" else args.device
    return evaluate_inferred(args.run_dir, how=str(data.get("infer", "one-shot")), batch_size=data.get("batch_size", 128),
                             images=data.get("images"), infer_from=data.get("infer_from"), device=device,
                             data_dir=None if data.get("data_dir") is None else str(data["data_dir"]))
