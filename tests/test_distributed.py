"""Data-parallel runs under torchrun (2 CPU processes, gloo) against a single process with the same global batch."""

import json
import subprocess
import sys

import textwrap

import torch

from supermask.run.checkpoint import load_tensors
from supermask.run.train import evaluate_run

BASE = ["train", "digits", "model=small-conv", "width=0.25", "epochs=3", "batch_size=64", "-q"]
SCHEDULES = ["iwr_every=1", "iwr_rate=0.2", "iterand_every_steps=10", "iterand_rate=0.1"]


def _torchrun(args, port, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                           *args], capture_output=True, text=True, timeout=timeout)


def _pair(tmp_path, extra, port):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "supermask", *BASE, *extra, f"out_dir={one}"], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                          "-m", "supermask", *BASE, *extra, f"out_dir={two}"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("test accuracy") == 1  # only rank 0 reports
    # channels-last by default: a 1-input-channel conv's weight has strides DDP's buckets did not match
    assert "Grad strides do not match" not in ddp.stderr
    return one, two, ddp


def _same_scores(one, two):
    ta, _ = load_tensors(one / "checkpoint.safetensors")
    tb, _ = load_tensors(two / "checkpoint.safetensors")
    for key in ta:
        if key.endswith("scores"):
            # the global batch's gradient, up to the order of float sums
            assert torch.allclose(ta[key], tb[key], atol=1e-5), key


def test_two_processes_match_one(tmp_path):
    one, two, _ = _pair(tmp_path, [], 29533)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["processes"] == 2 and a["processes"] == 1
    assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 360
    _same_scores(one, two)
    ma, _ = load_tensors(one / "masks.safetensors")
    mb, _ = load_tensors(two / "masks.safetensors")
    assert sum(int((ma[k] != mb[k]).sum()) for k in ma) <= 0.001 * sum(ma[k].numel() for k in ma)


def test_schedules_are_applied_identically_on_every_process(tmp_path):
    # Every IWR and IteRand step is followed by a cross-process checksum of weights and masks; a mismatch fails the run.
    one, two, ddp = _pair(tmp_path, SCHEDULES, 29534)
    log_a = [json.loads(line) for line in (one / "schedule.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (two / "schedule.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["epoch"], e["step"], e["layer"]) for e in log_a] == \
           [(e["kind"], e["epoch"], e["step"], e["layer"]) for e in log_b]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert abs(a["test_acc"] - b["test_acc"]) <= 3 / 360


def test_a_diverging_process_group_stops_cleanly(tmp_path):
    two = tmp_path / "nan"
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
                          "-m", "supermask", *BASE, "lr=1e30", f"out_dir={two}"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode != 0
    assert "non-finite" in ddp.stderr or "loss became" in ddp.stderr


def test_a_last_batch_shorter_than_the_processes_weighs_each_sample_as_one_process_does(tmp_path):
    # 1438 digits in batches of 479: the last batch holds 1 sample, so process 1's slice of it is empty
    one, two, _ = _pair(tmp_path, ["batch_size=479", "epochs=2"], 29536)
    _same_scores(one, two)


def test_the_recorded_accuracy_is_that_of_the_saved_network_with_batchnorm(tmp_path):
    # Each process's BatchNorm statistics follow its own slices; they are averaged before evaluation and saving.
    # (channels_last=false: torch 2.13's oneDNN corrupts the heap on this channels-last ResNet with 1 thread.)
    run_dir = tmp_path / "bn"
    ddp = _torchrun(["-m", "supermask", "train", "digits", "model=resnet18", "width=0.0625", "epochs=2",
                     "channels_last=false", "-q", f"out_dir={run_dir}"], 29537)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    recorded = json.loads((run_dir / "summary.json").read_text())["test_acc"]
    assert evaluate_run(run_dir, device="cpu")["test_acc"] == recorded


def test_a_process_failing_alone_during_set_up_stops_every_process(tmp_path):
    script = tmp_path / "rank0_cannot_mkdir.py"
    script.write_text(textwrap.dedent("""
        import os, pathlib, sys
        from supermask.cli import main
        if os.environ["RANK"] == "0":  # a file-system fault on one process only
            def fail(self, *args, **kwargs):
                raise PermissionError(13, "Permission denied", str(self))
            pathlib.Path.mkdir = fail
        sys.exit(main(sys.argv[1:]))
    """))
    run_dir = tmp_path / "run"
    ddp = _torchrun([str(script), *BASE, f"out_dir={run_dir}"], 29538, timeout=240)  # a hang fails here
    assert ddp.returncode != 0
    assert "supermask: error: cannot create out_dir" in ddp.stderr, ddp.stderr[-3000:]
    assert "supermask: error: process 0 failed during set-up: cannot create out_dir" in ddp.stderr, ddp.stderr[-3000:]
    assert "]: Traceback" not in ddp.stderr  # no process's traceback (torchrun prefixes their lines with [rankN])
