"""What is reproduced across torch thread counts, each side run in its own process with OMP_NUM_THREADS set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import supermask

SRC = str(Path(supermask.__file__).resolve().parents[1])


def supermask_cli(threads: int, *argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "supermask", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_a_biprop_smask_rebuilds_on_any_thread_count(tmp_path):
    # The digits net's 4.2M-weight linear layer: its float32 alpha sum was split differently by 1 and 2 threads,
    # so the file exported on one thread count was refused ("rebuilds with a different alpha") on the other.
    run = tmp_path / "run"
    supermask_cli(1, "train", "digits", "method=biprop", "epochs=1", f"out_dir={run}")
    for threads in (1, 2):
        supermask_cli(threads, "export", run, "-o", tmp_path / f"t{threads}.smask")
    assert (tmp_path / "t1.smask").read_bytes() == (tmp_path / "t2.smask").read_bytes()
    recorded = json.loads((run / "summary.json").read_text())["test_acc"]
    for threads in (1, 2):
        result = json.loads(supermask_cli(threads, "eval", tmp_path / "t1.smask").stdout)
        assert result["test_acc"] == result["recorded_test_acc"] == recorded


def test_the_same_thread_count_gives_the_same_masks(tmp_path):
    # Score gradients are float sums (conv and linear backward) whose order depends on torch's thread count, so
    # only runs on the same thread count are bit-identical. `threads=` sets it whatever OMP_NUM_THREADS says (a
    # sweep worker runs with cores / workers threads), and summary.json records it.
    from supermask.run.checkpoint import load_tensors

    a, b = tmp_path / "a", tmp_path / "b"
    supermask_cli(1, "train", "digits", "epochs=1", f"out_dir={a}")
    supermask_cli(2, "train", "digits", "epochs=1", "threads=1", f"out_dir={b}")
    masks_a, _ = load_tensors(a / "masks.safetensors")
    masks_b, _ = load_tensors(b / "masks.safetensors")
    assert masks_a.keys() == masks_b.keys() and all(masks_a[k].equal(masks_b[k]) for k in masks_a)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (a, b)]
    assert [s["threads"] for s in summaries] == [1, 1]
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"]
