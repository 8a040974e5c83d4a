"""holdout=N: training images held out as torch's random_split holds them out, never trained on, and evaluated."""

import pytest
import torch
from torch.utils.data import random_split

from supermask import ConfigError
from supermask.data import load_dataset
from supermask.data.holdout import hold_out
from supermask.data.prepare import as_trained
from supermask.data.task_streams import task_dataset
from supermask.run.config import make_config
from supermask.run.train import load_data, load_run_model, run


def test_the_split_is_torchs_random_split_with_the_seed():
    ds = load_dataset("digits")
    n = len(ds.train_y)
    kept, held = hold_out(ds, 200, 777)
    train_part, val_part = random_split(range(n), [n - 200, 200], generator=torch.Generator().manual_seed(777))
    assert torch.equal(kept.train_x, ds.train_x[list(train_part)]) and torch.equal(kept.train_y, ds.train_y[list(train_part)])
    assert torch.equal(held.test_x, ds.train_x[list(val_part)]) and torch.equal(held.test_y, ds.train_y[list(val_part)])
    assert torch.equal(kept.test_x, ds.test_x)  # the test split is untouched
    assert not torch.equal(hold_out(ds, 200, 778)[1].test_y, held.test_y)
    for bad in (0, n):
        with pytest.raises(ConfigError, match=f"holdout={bad} must leave training images: digits has {n}"):
            hold_out(ds, bad, 777)


def test_a_task_is_taken_before_its_images_are_held_out():
    ds = load_dataset("digits")
    task = task_dataset("permuted-mnist", ds, 2)
    kept, held = as_trained(ds, task_stream="permuted-mnist", task=2, holdout=200, holdout_seed=5)
    want_kept, want_held = hold_out(task, 200, 5)
    assert torch.equal(kept.train_x, want_kept.train_x) and torch.equal(held.test_x, want_held.test_x)
    assert not torch.equal(held.test_x, hold_out(ds, 200, 5)[1].test_x)  # the task's pixel order, not the raw one
    alone, none = as_trained(ds)
    assert alone is ds and none is None


def test_a_run_never_trains_on_the_held_out_images_and_reports_them(tmp_path):
    out = tmp_path / "run"
    cfg = make_config(None, {"model": "small-conv", "dataset": "digits", "width": 0.25, "epochs": 1, "batch_size": 128,
                             "holdout": 300, "out_dir": str(out)})
    summary = run(cfg, progress=False)
    _, ds, model, _ = load_run_model(out)
    full = load_dataset("digits")
    assert len(ds.train_y) == len(full.train_y) - 300  # what the run trained on
    held = load_data(cfg, held_out=True)
    with torch.no_grad():
        x = held.test_x.float().div(255).sub(torch.tensor(held.mean).view(1, -1, 1, 1)).div(torch.tensor(held.std).view(1, -1, 1, 1))
        acc = (model.eval()(x).argmax(1) == held.test_y).float().mean().item()
    assert summary["holdout_images"] == 300 and summary["holdout_acc"] == pytest.approx(acc, abs=1e-6)
    with pytest.raises(ConfigError, match="holds out no training images"):
        load_data(make_config(None, {"dataset": "digits"}), held_out=True)


def test_the_smask_of_a_holdout_run_evaluates_on_the_same_data(tmp_path, capsys):
    import json

    from supermask.cli import main

    out = tmp_path / "run"
    assert main(["train", "digits", "holdout=300", "epochs=1", f"out_dir={out}", "--quiet"]) == 0
    assert main(["export", str(out), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_data_as_run"] is True and result["test_acc"] == result["recorded_test_acc"]
