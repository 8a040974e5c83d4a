"""The paper-table benchmark's pure parts: schedule scaling for short runs, and the markdown table."""

import importlib.util
from pathlib import Path

import pytest

from supermask.config import make_config

spec = importlib.util.spec_from_file_location("paper_table", Path(__file__).parents[1] / "benchmarks" / "paper_table.py")
paper_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_table)


@pytest.mark.parametrize("method, model, epochs, every", [
    ("edge-popup+iwr", "conv4", 10, 1),    # F 3 of 250 -> 0.012 of 10 epochs -> 1
    ("biprop+iwr", "conv4", 10, 1),        # F 10 of 250 -> 0.4 -> 1
    ("biprop+iwr", "conv4", 100, 4),       # F 10 of 250 -> 4 of 100
    ("edge-popup+iwr", "conv6", 125, 5),   # F 10 of 250 -> 5 of 125
    ("edge-popup+iwr", "conv4", 250, 3),   # the paper's own length: its F
])
def test_short_runs_scale_the_iwr_period(method, model, epochs, every):
    cfg = make_config(model, paper_table.cell_overrides(model, 0.25, 0.9, method, 0, epochs, None))
    assert cfg.iwr_every == every and cfg.label == method


def test_markdown_table_beside_published():
    rows = [
        {"model": "conv4", "width": 0.25, "prune_rate": 0.5, "epochs": 10, "method": "edge-popup", "test_acc": 0.6},
        {"model": "conv4", "width": 0.25, "prune_rate": 0.5, "epochs": 10, "method": "edge-popup", "test_acc": 0.62},
        {"model": "conv4", "width": 0.25, "prune_rate": 0.9, "epochs": 10, "method": "biprop", "test_acc": 0.5},
    ]
    table = paper_table.markdown(rows, ["edge-popup", "biprop"])
    lines = table.splitlines()
    assert lines[2] == "| conv4, 0.25, 50, 10 | 61.00 ± 1.41 (73.34) | - (73.23) |"
    assert lines[3] == "| conv4, 0.25, 90, 10 | - | 50.00 |"
