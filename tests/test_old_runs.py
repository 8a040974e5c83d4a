"""Run directories and .smask files made by an older supermask still load, evaluate, export, compare and resume.

tests/fixtures/main-0013fc2 was made with main at 0013fc2 (before Biprop's published score gradient, the
preprocessing header and the method registry), on one thread:
    supermask train digits width=0.25 epochs=2 out_dir=ep
    supermask train digits method=biprop+iwr width=0.25 epochs=3 iwr_every=1 out_dir=bpiwr
    supermask study digits width=0.25 epochs=1 out_dir=study --score-seeds 2
    supermask export ep -o ep.smask; supermask export bpiwr -o bpiwr.smask
(the .lock files and the comparison's PNGs left out).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

import supermask
from supermask.cli import main
from supermask.run.config import recorded_config

OLD = Path(__file__).parent / "fixtures" / "main-0013fc2"


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of the fixtures (tests must not write into the repository), as the current directory: the runs
    recorded their out_dir relative to where they were made."""
    copy = tmp_path / "old"
    shutil.copytree(OLD, copy)
    monkeypatch.chdir(copy)
    return copy


def _out(capsys):
    return json.loads(capsys.readouterr().out)


def _recorded(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["test_acc"]


@pytest.mark.parametrize("name", ["ep", "bpiwr"])
def test_an_old_run_and_its_old_smask_evaluate_to_the_recorded_accuracy(old, capsys, name):
    assert main(["eval", name]) == 0
    assert _out(capsys)["test_acc"] == _recorded(old / name)
    assert main(["eval", f"{name}.smask"]) == 0  # a version 1 file
    assert _out(capsys)["test_acc"] == _recorded(old / name)


@pytest.mark.parametrize("name", ["ep", "bpiwr"])
def test_an_old_run_exports_to_the_network_its_old_file_holds(old, name):
    assert main(["export", name, "-o", "new.smask"]) == 0
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(supermask.load("new.smask")(x), supermask.load(f"{name}.smask")(x))


def test_an_old_biprop_run_reads_as_the_gradient_it_was_trained_with(old, capsys):
    assert recorded_config(str(old / "bpiwr" / "config.yaml")).biprop_grad == "alpha"
    # resumed from its own config: the same run
    assert main(["train", "out_dir=bpiwr", "--resume", "-q"]) == 0
    capsys.readouterr()
    # the same command today asks for the published gradient: another run, refused by name
    args = ["train", "digits", "method=biprop+iwr", "width=0.25", "epochs=3", "iwr_every=1", "out_dir=bpiwr", "--resume"]
    assert main(args) == 2
    assert "biprop_grad='alpha' there, biprop_grad='weight' now" in capsys.readouterr().err
    assert main([*args, "biprop_grad=alpha", "-q"]) == 0


def test_an_old_finished_run_resumes_to_itself(old):
    before = {p.name: p.read_bytes() for p in (old / "ep").iterdir() if p.is_file()}
    assert main(["train", "digits", "width=0.25", "epochs=2", "out_dir=ep", "--resume", "-q"]) == 0
    after = {p.name: p.read_bytes() for p in (old / "ep").iterdir() if p.is_file() and p.name in before}
    # the masks, weights and metrics stay as they were; summary.json is written again with today's fields
    assert {k: v for k, v in after.items() if k != "summary.json"} == {k: v for k, v in before.items() if k != "summary.json"}
    then, now = (json.loads(files["summary.json"]) for files in (before, after))
    assert (now["test_acc"], now["best_test_acc"], now["params_kept"]) == (then["test_acc"], then["best_test_acc"],
                                                                          then["params_kept"])


def test_an_old_study_compares_as_it_did(old, capsys):
    assert main(["compare", *sorted(str(p) for p in (old / "study" / "runs").iterdir()), "--out", "cmp",
                 "--no-plots"]) == 0
    then = json.loads((old / "study" / "compare" / "summary.json").read_text())["by_method_pair"]
    now = json.loads((old / "cmp" / "summary.json").read_text())["by_method_pair"]
    assert now == then
