"""Experiment trackers, offline: what a run sends to TensorBoard, W&B and MLflow, read back from their files."""

import json
import signal
import subprocess
import sys

import pytest

from supermask.run.config import make_config
from supermask.errors import ConfigError
from supermask.run.trackers import Trackers
from supermask.run.train import run

STEPS_PER_EPOCH = 23  # digits: 1438 training images in batches of 64


def config(out_dir, **overrides):
    values = {"width": 0.25, "epochs": 2, "device": "cpu", "out_dir": str(out_dir), "method": "edge-popup+iwr",
              "iwr_every": 1}
    values.update(overrides)
    return make_config("digits", values)


def test_logger_names_are_validated_and_split_on_commas():
    assert config("x", logger="tensorboard, mlflow").logger == ["tensorboard", "mlflow"]
    assert config("x", logger=["wandb", "wandb"]).logger == ["wandb"]
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'"):
        config("x", logger="tensorbord")


def test_a_missing_tracker_package_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb package: pip install 'supermask\[wandb\]'"):
        run(config(tmp_path / "r", logger="wandb"), progress=False)
    assert not (tmp_path / "r").exists()


def _tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_step_epoch_layer_and_recycle_step(tmp_path):
    pytest.importorskip("tensorboard")
    summary = run(config(tmp_path / "r", logger="tensorboard"), progress=False)
    acc, scalars = _tensorboard_scalars(tmp_path / "r" / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in scalars["epoch/test_acc"]] == pytest.approx([m["test_acc"] for m in metrics])
    assert [s for s, _ in scalars["epoch/test_acc"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [v for _, v in scalars["train/lr"]][0] == pytest.approx(0.1)  # cosine, first epoch at the base lr
    # kept fraction per masked layer: n - floor(n / 2) of n
    kept = {t: v[0][1] for t, v in scalars.items() if t.startswith("kept_fraction/")}
    assert set(kept) == {"kept_fraction/conv1", "kept_fraction/conv2", "kept_fraction/fc1", "kept_fraction/fc2"}
    assert all(v == pytest.approx(0.5, abs=1e-3) for v in kept.values())
    # the resolved config is the run's hyperparameters (TensorBoard's HParams plugin data, in this run's own file)
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["method"].string_value == "edge-popup" and hparams["iwr_every"].number_value == 1
    assert hparams["epochs"].number_value == 2 and hparams["logger"].string_value == "['tensorboard']"
    assert summary["test_acc"] == pytest.approx(metrics[-1]["test_acc"])


def test_schedule_steps_reach_the_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    run(config(tmp_path / "r", logger="tensorboard", epochs=3), progress=False)  # IWR fires after epoch 2 only
    _, scalars = _tensorboard_scalars(tmp_path / "r" / "tensorboard")
    events = [json.loads(line) for line in (tmp_path / "r" / "schedule.jsonl").read_text().splitlines()]
    assert scalars["iwr/changed"] == [(2 * STEPS_PER_EPOCH, sum(e["changed"] for e in events))]
    for e in events:
        assert scalars[f"iwr/changed/{e['layer']}"] == [(e["step"], e["changed"])]


def test_mlflow_run_holds_params_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run(config(tmp_path / "r", logger="mlflow"), progress=False)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
    run_id = json.loads((tmp_path / "r" / "trackers.json").read_text())["mlflow"]
    data = client.get_run(run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["method"] == "edge-popup" and data.data.params["iwr_every"] == "1"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert len(client.get_metric_history(run_id, "epoch/test_acc")) == 2


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(config(tmp_path / "r", logger="wandb", epochs=1), progress=False)
    run_id = json.loads((tmp_path / "r" / "trackers.json").read_text())["wandb"]
    offline = list((tmp_path / "r" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_a_failing_tracker_is_reported_once_and_dropped(capsys):
    class Broken:
        name = "broken"

        def __init__(self):
            self.calls = 0

        def scalars(self, values, step):
            self.calls += 1
            raise OSError("disk full")

    class Fine:
        name = "fine"

        def __init__(self):
            self.seen = []

        def scalars(self, values, step):
            self.seen.append((step, values))

    broken, fine = Broken(), Fine()
    trackers = Trackers([broken, fine])
    trackers.scalars({"a": 1.0}, 1)
    trackers.scalars({"a": 2.0}, 2)
    assert broken.calls == 1 and fine.seen == [(1, {"a": 1.0}), (2, {"a": 2.0})]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logger broken failed (OSError: disk full); the run goes on" in err[0]


def test_a_resumed_run_logs_each_step_once(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import supermask.run.loop as loop

    whole = run(config(tmp_path / "whole", logger="tensorboard"), progress=False)
    real = loop.train_pass

    def killed_after_epoch_2_before_its_checkpoint(*args, **kw):
        result = real(*args, **kw)
        if args[2] == 1:  # epoch index
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(loop, "train_pass", killed_after_epoch_2_before_its_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "r", logger="tensorboard"), progress=False)
    monkeypatch.setattr(loop, "train_pass", real)
    resumed = run(config(tmp_path / "r", logger="tensorboard"), resume=True, progress=False)
    assert resumed["test_acc"] == whole["test_acc"]
    _, scalars = _tensorboard_scalars(tmp_path / "r" / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [s for s, _ in scalars["epoch/test_acc"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


KILLED_IN_MLFLOW_SETUP = """
import os, signal, sys
from pathlib import Path
import sqlalchemy
from sqlalchemy.engine import Engine
from supermask.run.trackers import open_trackers

@sqlalchemy.event.listens_for(Engine, "after_cursor_execute")
def killed_inside_a_migration(conn, cursor, statement, *args):  # a kill -9 as MLflow rebuilds its runs table
    if statement.lstrip().startswith("CREATE TABLE _alembic_tmp_runs"):
        os.kill(os.getpid(), signal.SIGKILL)

open_trackers(["mlflow"], Path(sys.argv[1]), "run", 0)
"""


def test_a_kill_during_mlflow_setup_leaves_no_half_made_store(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from supermask.run.trackers import open_trackers

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_MLFLOW_SETUP, str(tmp_path)], capture_output=True,
                            check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "mlflow.db").exists()  # the store is whole or absent, never half-migrated
    trackers = open_trackers(["mlflow"], tmp_path, "run", 0)  # as the resumed run opens it
    assert [t.name for t in trackers.trackers] == ["mlflow"]
    trackers.scalars({"epoch/test_acc": 0.5}, 1)
    trackers.close()
    assert "could not start" not in capsys.readouterr().err and [t.name for t in trackers.trackers] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "trackers.json"]  # the killed set-up's file is gone
