"""Data-parallel runs under torchrun (2 CPU processes, gloo) against a single process with the same global batch."""

import json
import subprocess
import sys

import torch

from supermask.checkpoint import load_tensors

BASE = ["train", "digits", "model=small-conv", "width=0.25", "epochs=3", "batch_size=64", "-q"]
SCHEDULES = ["iwr_every=1", "iwr_rate=0.2", "iterand_every_steps=10", "iterand_rate=0.1"]


def _pair(tmp_path, extra, port):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "supermask", *BASE, *extra, f"out_dir={one}"], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                          "-m", "supermask", *BASE, *extra, f"out_dir={two}"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("test accuracy") == 1  # only rank 0 reports
    return one, two, ddp


def test_two_processes_match_one(tmp_path):
    one, two, _ = _pair(tmp_path, [], 29533)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["processes"] == 2 and a["processes"] == 1
    assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 360
    ta, _ = load_tensors(one / "checkpoint.safetensors")
    tb, _ = load_tensors(two / "checkpoint.safetensors")
    for key in ta:
        if key.endswith("scores"):
            # the global batch's gradient, up to the order of float sums (and the short last batch's weighting)
            assert torch.allclose(ta[key], tb[key], atol=1e-5), key
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
