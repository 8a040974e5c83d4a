"""Inputs a run cannot use, refused up front: one line on stderr, exit code 2, and no run directory left behind."""

import pytest
import torch

import supermask.run.train
from supermask.cli import main
from supermask.run.config import make_config
from supermask.data import load_dataset
from supermask.errors import ConfigError
from supermask.run.train import check_model_size, pick_device

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
], ids=["token-model-on-images", "image-model-on-tokens", "meta-device", "width-1e6", "width-1e30", "threads-100000"])
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
    monkeypatch.setattr(supermask.run.train, "memory_of", lambda device: need)
    check_model_size(cfg, ds, torch.device("cpu"))  # exactly fits
    with pytest.raises(ConfigError, match=r"2 runs of model=small-conv at width=0.25 has 19,472 parameters"):
        check_model_size(cfg, ds, torch.device("cpu"), runs=2)
    monkeypatch.setattr(supermask.run.train, "memory_of", lambda device: need - 1)
    with pytest.raises(ConfigError, match=r"more than the .* GiB of cpu"):
        check_model_size(cfg, ds, torch.device("cpu"))


def test_threads_up_to_the_cores_are_taken(monkeypatch):
    monkeypatch.setattr(supermask.run.train.os, "cpu_count", lambda: 3)
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    supermask.run.train.set_threads(3)
    assert set_to == [3]
    with pytest.raises(ConfigError, match="threads=4 is more than the 3 CPU cores of this machine: choose at most 3"):
        supermask.run.train.set_threads(4)


# --------------------------------------------------------------------------------------------------------------
# messages that say what is wrong


@pytest.mark.parametrize("name", ["gone/cifar10-jpeg75.tar.gz", "cifar10.tar.gz", "./cifar10"])
def test_a_missing_dataset_path_is_not_found_rather_than_unknown(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, "train", "digits", *FAST, f"out_dir={tmp_path / 'run'}", f"dataset={name}",
                          f"data_dir={tmp_path / 'data'}")
    assert f"dataset {name!r} not found: no file or folder {tmp_path / 'data' / name}" in line
    assert "unknown dataset" not in line and "did you mean" not in line
    assert not (tmp_path / "run").exists()


def test_a_near_miss_of_a_dataset_name_is_still_unknown(tmp_path, capsys):
    line = one_line_error(capsys, "train", "digits", *FAST, f"out_dir={tmp_path / 'run'}", "dataset=mnist2")
    assert "unknown dataset 'mnist2'" in line and "did you mean 'mnist'" in line


def test_cells_with_the_same_name_are_named(tmp_path, capsys):
    # lr 0.1000001 is 0.1 in a name (6 significant digits): both cells would write cells/lr=0.1-score_seed=0
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: digits\ngrid: {{lr: [0.1, 0.1000001], score_seed: [0, 1]}}\nout_dir: {tmp_path / 'out'}\n")
    line = one_line_error(capsys, "sweep", sweep)
    assert ("two cells of the sweep have the same name 'lr=0.1-score_seed=0': {'lr': 0.1, 'score_seed': 0} and "
            "{'lr': 0.1000001, 'score_seed': 0}") in line
    assert not (tmp_path / "out").exists()


def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import supermask.run.checkpoint

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(supermask.run.checkpoint.os, "fsync", full)
    run_dir = tmp_path / "run"
    line = one_line_error(capsys, "train", "digits", *FAST, f"out_dir={run_dir}")
    assert line == f"supermask: error: {run_dir / 'config.yaml'}: No space left on device"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # the temporary file is removed


def rgb_folder(root):
    """An image folder of 4x4 RGB images in 2 classes: data of another shape than digits' (1 x 8 x 8, 10 classes)."""
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), (60 * i, 100, 200)).save(root / split / cls / f"{i}.png")
    return root


OTHER_SHAPE = "in_channels 1 there, 3 in imgs; image_size 8 there, 4 in imgs; num_classes 10 there, 2 in imgs"


def test_init_from_needs_a_dense_run_of_the_same_model_width_and_data(tmp_path, capsys):
    search, dense = tmp_path / "search", tmp_path / "dense"
    assert main(["train", "digits", *FAST, f"out_dir={search}"]) == 0
    assert main(["train", "digits", *FAST, "method=dense", f"out_dir={dense}"]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    line = one_line_error(capsys, "train", "digits", *FAST, f"init_from={search}", f"out_dir={run_dir}")
    assert f"init_from {str(search)!r} is a method=edge-popup run: init_from needs a dense run (method=dense)" in line
    line = one_line_error(capsys, "train", "digits", *FAST, "width=0.5", f"init_from={dense}", f"out_dir={run_dir}")
    assert f"init_from {str(dense)!r} is a width=0.25 run and this run has width=0.5" in line
    line = one_line_error(capsys, "train", "digits", *FAST, f"dataset={rgb_folder(tmp_path / 'imgs')}",
                          f"init_from={dense}", f"out_dir={run_dir}")
    assert line.endswith(f"init_from: {dense} was trained on data of another shape ({OTHER_SHAPE})")
    assert not run_dir.exists()
    assert main(["train", "digits", *FAST, f"init_from={dense}", f"out_dir={run_dir}"]) == 0


def test_eval_on_data_of_another_shape_says_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "digits", *FAST, f"out_dir={run_dir}"]) == 0
    capsys.readouterr()
    line = one_line_error(capsys, "eval", run_dir, "dataset=listops")
    assert "model=small-conv reads images, and dataset listops is token sequences" in line
    line = one_line_error(capsys, "eval", run_dir, f"dataset={rgb_folder(tmp_path / 'imgs')}")
    assert line.endswith(f"{run_dir} was trained on data of another shape ({OTHER_SHAPE})")
