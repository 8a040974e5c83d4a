"""Inputs a run cannot use, refused up front: one line on stderr, exit code 2, and no run directory left behind."""

import pytest
import torch

import supermask.train
from supermask.cli import main
from supermask.config import make_config
from supermask.data import load_dataset
from supermask.errors import ConfigError
from supermask.train import check_model_size, pick_device

FAST = ["width=0.25", "device=cpu", "epochs=1", "-q"]


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    assert lines[0].startswith("supermask: error: ")
    return lines[0]


@pytest.mark.parametrize("overrides, needles", [
    (["model=text-transformer", "dataset=digits"], ["model=text-transformer reads token sequences", "digits is images"]),
    (["dataset=listops", "model=small-conv"], ["model=small-conv reads images", "listops is token sequences",
                                               "model=text-transformer"]),
    (["device=meta"], ["unknown device 'meta'"]),
    (["width=1e6"], ["model=small-conv at width=1e+06 has", "parameters", "GiB", "choose a smaller width"]),
    (["width=1e30"], ["width=1e+30", "too large", "choose a smaller width"]),
    (["threads=100000"], ["threads=100000 is more than the", "CPU cores of this machine"]),
])
def test_a_run_that_cannot_work_is_one_line_and_makes_no_directory(overrides, needles, tmp_path, capsys):
    run_dir = tmp_path / "run"
    line = one_line_error(capsys, "train", "digits", *FAST, f"out_dir={run_dir}", *overrides)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not run_dir.exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_an_unavailable_mps_is_one_line_in_every_command(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "digits", *FAST, f"out_dir={run_dir}"]) == 0
    capsys.readouterr()
    needle = "device 'mps' requested but MPS (an Apple GPU) is not available"
    assert needle in one_line_error(capsys, "eval", run_dir, "--device", "mps")
    assert needle in one_line_error(capsys, "path", run_dir, run_dir, "--out", tmp_path / "p", "--device", "mps")
    assert needle in one_line_error(capsys, "study", "digits", *FAST[:-1], "device=mps", f"out_dir={tmp_path / 's'}",
                                    "--score-seeds", "2")
    assert not (tmp_path / "p").exists() and not (tmp_path / "s" / "runs").exists()


def test_pick_device_refuses_what_this_machine_lacks():
    with pytest.raises(ConfigError, match="unknown device 'meta'"):
        pick_device("meta")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        pick_device("gpu")
    with pytest.raises(ConfigError, match="'cuda:99' requested but"):
        pick_device("cuda:99")
    assert pick_device("cpu") == torch.device("cpu")


def test_the_memory_check_counts_the_parameters_without_allocating_them(monkeypatch):
    # small-conv at width 0.25 on 8x8 digits: convs 16*1*9 + 16*16*9, FC 256 -> 64 after the 2x2 pool of 16 channels
    # (16*4*4 = 256 inputs), then 64 -> 10: 144 + 2304 + 16384 + 640 = 19,472 weights, 4 float32 copies of each.
    cfg = make_config("digits", {"width": 0.25})
    ds = load_dataset("digits")
    need = 4 * 4 * 19_472
    monkeypatch.setattr(supermask.train, "memory_of", lambda device: need)
    check_model_size(cfg, ds, torch.device("cpu"))  # exactly fits
    with pytest.raises(ConfigError, match=r"2 runs of model=small-conv at width=0.25 has 19,472 parameters"):
        check_model_size(cfg, ds, torch.device("cpu"), runs=2)
    monkeypatch.setattr(supermask.train, "memory_of", lambda device: need - 1)
    with pytest.raises(ConfigError, match=r"more than the .* GiB of cpu"):
        check_model_size(cfg, ds, torch.device("cpu"))


def test_threads_up_to_the_cores_are_taken(monkeypatch):
    monkeypatch.setattr(supermask.train.os, "cpu_count", lambda: 3)
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    supermask.train.set_threads(3)
    assert set_to == [3]
    with pytest.raises(ConfigError, match="threads=4 is more than the 3 CPU cores of this machine: choose at most 3"):
        supermask.train.set_threads(4)
