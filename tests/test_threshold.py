"""The threshold mask (method=threshold; SupSup's permuted-MNIST mask): M = 1[S >= 0] and its identity gradient by
hand, a run whose density is free and whose .smask rebuilds exactly, and tasks of it inferred over one network."""

import json

import pytest
import torch

from supermask.cli import main
from supermask.core.threshold import ThresholdMask
from supermask.data import load_dataset
from supermask.data.task_streams import permuted
from supermask.errors import ConfigError
from supermask.export.multitask import evaluate_inferred, export_tasks
from supermask.multi.tasks import train_tasks
from supermask.run.config import make_config


def test_keep_where_the_score_is_not_negative_by_hand():
    p = ThresholdMask(torch.tensor([[0.5, -0.1], [0.0, -2.0]]), 0.5)
    w = torch.tensor([[2.0, 3.0], [4.0, 5.0]])
    assert p.mask().tolist() == [[True, False], [True, False]]  # S = 0 is kept (>=)
    eff = p(w)
    assert eff.tolist() == [[2.0, 0.0], [4.0, 0.0]]
    (eff * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    # identity straight-through: dL/dS = dL/dW_eff * W, for every score, kept or not
    assert p.scores.grad.tolist() == [[2.0, 6.0], [12.0, 20.0]]
    with torch.no_grad():
        assert p(w).tolist() == [[2.0, 0.0], [4.0, 0.0]]


def test_global_pruning_is_refused():
    with pytest.raises(ConfigError, match="method=threshold keeps the weights of non-negative score"):
        make_config("digits", {"method": "threshold", "prune_scope": "global"})


def test_a_threshold_run_exports_and_rebuilds_exactly(tmp_path, capsys):
    assert main(["train", "digits", "method=threshold", "epochs=2", "threads=1", f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["test_acc"] > 0.5
    assert 0.2 < summary["params_kept"] / summary["params_total"] < 0.8  # free, near the half of symmetric scores
    assert summary["params_kept"] != summary["params_total"] // 2
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]


def test_threshold_tasks_are_inferred_over_one_network(tmp_path):
    digits = load_dataset("digits")
    stream = [permuted(digits, t) for t in range(2)]
    cfg = make_config("digits", {"model": "lenet300", "width": 0.5, "epochs": 3, "method": "threshold", "tasks": 2,
                                 "threads": 1, "out_dir": str(tmp_path / "s")})
    record = train_tasks(cfg, progress=False, stream=stream)
    export_tasks(tmp_path / "s", tmp_path / "s.smask")
    result = evaluate_inferred(tmp_path / "s.smask", batch_size=64, images=128, stream=stream)
    assert result["task_inferred"] == 1.0
    assert [r["test_acc_task_given"] for r in result["per_task"]] == [t["test_acc"] for t in record["per_task"]]
