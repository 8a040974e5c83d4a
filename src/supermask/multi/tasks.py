"""Many tasks over one random network (SupSup; Wortsman et al. 2020): a mask per task, a run directory per task.

Task t trains as an ordinary run in <out_dir>/task-<t>/: the stream's weights (one `weight_seed` for every task),
its own scores (`score_seed + t`), data order (`data_seed + t`) and mask, on task t's data. A finished task's run
is never opened for writing again, so learning a later task cannot change an earlier task's network: nothing is
forgotten, by construction. Training holds one task's scores at a time, so its memory does not grow with the
number of tasks, and a BatchNorm layer (non-affine in the ResNets) keeps each task's statistics in that task's run:
one BatchNorm per task, as the published split-CIFAR setup (`MultitaskNonAffineBN`).

<out_dir>/config.yaml is the stream's config (`tasks=N`); tasks.json records each finished task's accuracy with its
own mask (the task given: the paper's GG setting). A killed stream resumes with --resume: finished tasks are kept
and the task in progress resumes from its checkpoint. Inferring an unknown task's identity is
`supermask.core.superpose`; all tasks' masks go into one `.smask` with `supermask.export.multitask`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supermask.data.base import Dataset
from supermask.errors import ConfigError
from supermask.run.checkpoint import atomic_write_text, read_json, write_json
from supermask.run.config import Config, dump_yaml
from supermask.run.files import CONFIG_FILE, SUMMARY, TASKS_FILE
from supermask.run.lock import run_dir_is_empty, run_lock
from supermask.run.rundir import check_same_run, task_dir, task_runs  # noqa: F401 - task_runs: part of this API

def task_config(cfg: Config, task: int) -> Config:
    """The config of the stream's task `task`: the same weights, that task's data, its own score and data seeds."""
    return dataclasses.replace(cfg, tasks=None, task=task if cfg.task_stream is not None else None,
                               score_seed=cfg.score_seed + task, data_seed=cfg.data_seed + task,
                               out_dir=str(task_dir(cfg.out_dir, task)))


def train_tasks(cfg: Config, *, resume: bool = False, progress: bool = True,
                stream: Sequence[Dataset] | None = None) -> dict[str, Any]:
    """Train the `cfg.tasks` tasks of `cfg.task_stream` (or of `stream`, a list of the user's own datasets, one a
    task) one after another over one random network; returns what tasks.json records."""
    from supermask.run import train

    if cfg.tasks is None:
        raise ConfigError("train_tasks trains a stream of tasks: set tasks=N")
    if stream is not None:
        if cfg.task_stream is not None:
            raise ConfigError(f"give task_stream={cfg.task_stream} or a stream of datasets, not both")
        if len(stream) != cfg.tasks:
            raise ConfigError(f"tasks={cfg.tasks}, and the stream holds {len(stream)} datasets")
        if len({ds.num_classes for ds in stream}) != 1:
            raise ConfigError("the stream's datasets have different numbers of classes: one network serves them all")
    elif cfg.task_stream is None:
        raise ConfigError(f"tasks={cfg.tasks} needs task_stream= (permuted-mnist, split-cifar10), or in Python a "
                          "stream of datasets: supermask.multi.tasks.train_tasks(cfg, stream=[...])")
    if cfg.score_seed + cfg.tasks - 1 >= 2**63 or cfg.data_seed + cfg.tasks - 1 >= 2**63:
        raise ConfigError(f"score_seed and data_seed count up by one a task: with tasks={cfg.tasks} they must stay "
                          "below 2^63")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / f"{cfg.model}-{cfg.method}-tasks{cfg.tasks}-{stamp}"
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} exists and is not a directory; choose another out_dir")
    with run_lock(out_dir):
        if (out_dir / CONFIG_FILE).is_file():
            if not resume:
                raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another out_dir")
            check_same_run(cfg, out_dir)
        else:
            if not run_dir_is_empty(out_dir) and not resume:
                raise ConfigError(f"out_dir {out_dir} exists and is not empty; choose another out_dir")
            atomic_write_text(out_dir / CONFIG_FILE, dump_yaml(cfg))
        per_task: list[dict[str, Any]] = []
        for t in range(cfg.tasks):
            one = task_config(cfg, t)
            where = Path(one.out_dir)
            if (where / SUMMARY).is_file():
                summary = read_json(where / SUMMARY)
            else:
                if progress:
                    print(f"task {t + 1} of {cfg.tasks}", file=sys.stderr)
                # resume=True: a task cut off by a kill continues from its checkpoint (or starts, where it had none);
                # its own config is checked against the one it recorded
                summary = train.run(one, resume=True, progress=progress, data=None if stream is None else stream[t])
            gc.collect()  # the finished task's model: its reference cycles would otherwise pile up, a task's worth each
            per_task.append({"task": t, "run": where.name, "dataset": summary["dataset"],
                             "test_acc": summary["test_acc"], "params_kept": summary.get("params_kept"),
                             "params_total": summary.get("params_total"), "seconds": summary["seconds"]})
            record = {"tasks": cfg.tasks, "task_stream": cfg.task_stream, "model": cfg.model, "method": cfg.label,
                      "prune_rate": cfg.prune_rate, "weight_seed": cfg.weight_seed, "finished": len(per_task),
                      "mean_test_acc": sum(r["test_acc"] for r in per_task) / len(per_task), "per_task": per_task,
                      "out_dir": str(out_dir)}
            write_json(out_dir / TASKS_FILE, record)
    return record
