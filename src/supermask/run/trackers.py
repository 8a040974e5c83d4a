"""Experiment trackers: a run's losses, accuracies, config and schedule steps sent to TensorBoard, Weights & Biases
or MLflow, beside the metrics.jsonl that every run writes.

Each tracker is an optional extra (`pip install 'supermask[tensorboard]'` and so on). A missing package is a
one-line error before anything is trained; a tracker that fails during a run is reported once and dropped, and the
run goes on, since the run's own files are the record and a dashboard is a view of it.

Where they write: TensorBoard into RUN_DIR/tensorboard; W&B into RUN_DIR/wandb (WANDB_MODE=offline and
WANDB_PROJECT are W&B's own settings; the project defaults to "supermask"); MLflow to $MLFLOW_TRACKING_URI, else a
SQLite store RUN_DIR/mlflow.db (experiment $MLFLOW_EXPERIMENT_NAME, default "supermask"; made whole before it
appears, see `_sqlite_store`). A resumed run continues
the same W&B and MLflow run (their ids are kept in RUN_DIR/trackers.json) and TensorBoard drops the steps it
logged after the checkpoint, so no step appears twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from supermask.errors import ConfigError
from supermask.run.checkpoint import _create_temp, atomic_write_text

TRACKERS = ("tensorboard", "wandb", "mlflow")
IDS_FILE = "trackers.json"


def check_available(names: list[str]) -> None:
    """Refuse unknown tracker names, and trackers whose package is not installed, before a run starts."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown logger {name!r}: expected any of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"logger={name} needs the {name} package: pip install 'supermask[{name}]'")


def _flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """Config values as the scalar types every tracker's hyperparameter table takes."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


class TensorBoard:
    name = "tensorboard"

    def __init__(self, out_dir: Path, run_name: str, ids: dict[str, str], resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides what a killed run logged after its last checkpoint, so a resumed run shows no step twice
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # written into this run's own event file (SummaryWriter.add_hparams would start a separate sub-run)
        for summary in hparams(_flat_params(config), metrics):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    name = "wandb"

    def __init__(self, out_dir: Path, run_name: str, ids: dict[str, str], resume_step: int):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "supermask"), name=run_name, dir=str(out_dir),
                              id=ids.get("wandb"), resume="allow", reinit=True)
        ids["wandb"] = self.run.id

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _sqlite_store(path: Path) -> str:
    """The URI of the run's own MLflow store at `path`, which is absent or complete: MLflow makes its tables by a
    chain of migrations, and a process killed among them leaves a database that no later start opens. So a new store
    is made in a temporary file beside it and renamed into place (a killed set-up leaves only the temporary file,
    removed at the next start; the run's lock keeps any other process from starting at the same time)."""
    if not path.exists():
        from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # with any journal SQLite left
            stale.unlink(missing_ok=True)
        fd, tmp = _create_temp(path.parent, path.name)
        os.close(fd)  # SQLite takes an empty file for an empty database
        try:
            SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return f"sqlite:///{path}"


class MLflow:
    name = "mlflow"

    def __init__(self, out_dir: Path, run_name: str, ids: dict[str, str], resume_step: int):
        import mlflow

        self.client = mlflow.MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or _sqlite_store(out_dir.resolve() / "mlflow.db"))
        if ids.get("mlflow"):
            self.run_id = ids["mlflow"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "supermask")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        ids["mlflow"] = self.run_id
        self.logged_params = bool(self.client.get_run(self.run_id).data.params)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.logged_params:  # MLflow refuses to log a parameter twice, even with the same value
            return
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in _flat_params(config).items()])

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow}


class Trackers:
    """The configured trackers of one run, behind one interface; an empty one does nothing.

    Per-step losses are kept on the device and sent in batches (`flush`), so logging them costs no extra host
    synchronization per step.
    """

    def __init__(self, trackers: list | None = None):
        self.trackers = list(trackers or [])
        self._pending: list[tuple[int, torch.Tensor, float]] = []

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001 - any failure of a dashboard must not stop the run
                self.trackers.remove(tracker)
                print(f"supermask: logger {tracker.name} failed ({type(e).__name__}: {e}); the run goes on without it "
                      f"(metrics.jsonl has everything)", file=sys.stderr)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.trackers and values:
            self._each("scalars", values, step)

    def step_loss(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if self.trackers:
            self._pending.append((step, loss.detach(), lr))

    def flush(self) -> None:
        if not self._pending:
            return
        losses = torch.stack([loss.float() for _, loss, _ in self._pending]).tolist()
        for (step, _, lr), loss in zip(self._pending, losses):
            self.scalars({"train/loss": loss, "train/lr": lr}, step)
        self._pending.clear()

    def epoch(self, record: dict[str, Any], step: int) -> None:
        self.flush()
        self.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"} | {"epoch/epoch": record["epoch"]}, step)

    def schedule(self, events: list[dict[str, Any]]) -> None:
        """Every IWR/IteRand step: weights changed per layer and in all."""
        by_step: dict[tuple[str, int], dict[str, float]] = {}
        for e in events:
            values = by_step.setdefault((e["kind"], e["step"]), {f"{e['kind']}/changed": 0})
            values[f"{e['kind']}/changed"] += e["changed"]
            values[f"{e['kind']}/changed/{e['layer']}"] = e["changed"]
        for (_, step), values in by_step.items():
            self.scalars(values, step)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.trackers:
            self._each("hparams", config, metrics)

    def close(self) -> None:
        self.flush()
        if self.trackers:
            self._each("close")
        self.trackers = []


def open_trackers(names: list[str], out_dir: Path, run_name: str, resume_step: int) -> Trackers:
    """Start the named trackers for the run in `out_dir` (continuing their runs when it is resumed)."""
    if not names:
        return Trackers()
    check_available(names)
    ids_path = out_dir / IDS_FILE
    ids: dict[str, str] = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    trackers = Trackers()
    for name in names:
        try:
            trackers.trackers.append(_CLASSES[name](out_dir, run_name, ids, resume_step))
        except Exception as e:  # noqa: BLE001 - same rule as a failure later in the run
            print(f"supermask: logger {name} could not start ({type(e).__name__}: {e}); the run goes on without it",
                  file=sys.stderr)
    atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")
    return trackers
