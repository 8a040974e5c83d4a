"""Checkpoints inside an epoch (checkpoint_every_steps) and resuming at the next unseen batch; the training pass's
speed figures (images/s and the share of time spent waiting for data)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import supermask.data
from supermask.run.checkpoint import load_tensors
from supermask.cli import main
from supermask.run.config import make_config
from supermask.errors import ConfigError
from supermask.multi.together import check_group, train_together
from supermask.run.train import run

TIMINGS = ("seconds", "images_per_s", "data_wait")  # measured, so they differ between equal runs
TRAIN_IMAGES, STEPS_PER_EPOCH = 1438, 23  # digits' training split, in batches of 64
ARGS = {"width": 0.25, "epochs": 3, "device": "cpu", "threads": 1}


def config(out_dir, **overrides):
    return make_config("digits", {**ARGS, "out_dir": str(out_dir), **overrides})


def metrics(run_dir: Path, *, timings: bool = False) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return lines if timings else [{k: v for k, v in m.items() if k not in TIMINGS} for m in lines]


def assert_same_run(a: Path, b: Path, *, loss_tolerance: float = 0.0) -> None:
    """Same masks, accuracy, metrics, schedule log and final checkpoint (scores, weights, optimizer state). A group's
    runs average their losses in another order than a run alone (the same gradients; the last float bits of the
    reported mean losses differ): `loss_tolerance`."""
    assert (a / "masks.safetensors").read_bytes() == (b / "masks.safetensors").read_bytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("test_acc", "best_test_acc", "train_acc", "iwr_steps", "iterand_steps"):
        assert sa.get(key) == sb.get(key), key
    ma, mb = metrics(a), metrics(b)
    assert [sorted(r) for r in ma] == [sorted(r) for r in mb]
    for ra, rb in zip(ma, mb):
        for key, value in ra.items():
            tolerance = loss_tolerance if key in ("train_loss", "test_loss") else 0.0
            assert rb[key] == pytest.approx(value, rel=tolerance, abs=0.0), (ra["epoch"], key)
    for name in ("schedule.jsonl",):
        assert (a / name).exists() == (b / name).exists()
        if (a / name).exists():
            assert (a / name).read_text() == (b / name).read_text()
    ta, tb = load_file(a / "checkpoint.safetensors"), load_file(b / "checkpoint.safetensors")
    assert set(ta) == set(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    assert "partial" not in load_tensors(b / "checkpoint.safetensors")[1]


@pytest.fixture
def one_thread():
    """In-process runs set torch's thread count (threads=1, as the subprocesses do); put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------
# the data side: skipping the batches already seen


@pytest.mark.parametrize("augment", [True, False])
def test_start_batch_yields_the_rest_of_the_same_epoch(augment):
    ds = supermask.data.load_dataset("digits")
    kw = {"seed": 3, "epoch": 2, "augment": augment}
    whole = list(supermask.data.train_batches(ds, 100, **kw))
    assert len(whole) == 15  # 1438 images: 14 full batches and one of 38
    for start in (0, 1, 7, 14, 15):
        rest = list(supermask.data.train_batches(ds, 100, start_batch=start, **kw))
        assert len(rest) == len(whole) - start
        for (x, y), (wx, wy) in zip(rest, whole[start:]):
            assert torch.equal(x, wx) and torch.equal(y, wy)
    with pytest.raises(ConfigError, match="start_batch"):
        next(supermask.data.train_batches(ds, 100, start_batch=-1, **kw))


# --------------------------------------------------------------------------------------------------------------
# the key


@pytest.mark.parametrize("value", [0, -3, 1.5, "often", True])
def test_checkpoint_every_steps_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match="checkpoint_every_steps"):
        make_config("digits", {"checkpoint_every_steps": value})


def test_checkpoint_every_steps_is_off_by_default_and_a_positive_int_is_taken():
    assert make_config("digits").checkpoint_every_steps is None
    assert make_config("digits", {"checkpoint_every_steps": "50"}).checkpoint_every_steps == 50


def test_a_bad_checkpoint_every_steps_is_one_line_on_the_command_line(tmp_path, capsys):
    code = main(["train", "digits", "checkpoint_every_steps=0", f"out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "checkpoint_every_steps=0 must be an integer in [1, " in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "checkpoint_every_steps" in capsys.readouterr().out


def test_a_group_killed_inside_an_epoch_resumes_to_the_runs_alone(tmp_path, monkeypatch, one_thread):
    # Runs trained together take checkpoint_every_steps as a run alone does: killed 2 batches after the checkpoint
    # inside epoch 2, the group resumes at its next unseen batch and ends as each run ends alone.
    keys = {"method": "iterand", "iterand_every_steps": 7}

    def configs(root, every):
        return [config(root / f"r{i}", score_seed=i, data_seed=i, checkpoint_every_steps=every, **keys) for i in range(2)]

    check_group(configs(tmp_path / "t", 5))  # accepted
    for cfg in configs(tmp_path / "alone", None):
        run(cfg, progress=False)
    real = supermask.data.train_batches

    def killed(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs), start=kwargs.get("start_batch", 0)):
            if kwargs["epoch"] == 1 and i == 14:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(supermask.data, "train_batches", killed)
    with pytest.raises(KeyboardInterrupt):
        train_together(configs(tmp_path / "t", 5), tmp_path / "g", progress=False)
    states = load_tensors(tmp_path / "g" / "together.safetensors")[1]["states"]
    # the last checkpoint: step 35 = 23 + 12, the 12th batch of epoch 2 done
    assert [(s["step"], s["partial"]["batch"]) for s in states] == [(35, 12), (35, 12)]
    monkeypatch.setattr(supermask.data, "train_batches", real)
    train_together(configs(tmp_path / "t", 5), tmp_path / "g", progress=False)
    for i in range(2):
        assert_same_run(tmp_path / "alone" / f"r{i}", tmp_path / "t" / f"r{i}", loss_tolerance=1e-6)


# --------------------------------------------------------------------------------------------------------------
# the key changes nothing a run computes


def test_checkpoints_inside_epochs_leave_a_run_unchanged(tmp_path, monkeypatch, one_thread):
    saved = []
    real = supermask.run.train.save_checkpoint

    def recording(path, model, optimizer, meta):
        saved.append((meta["step"], meta.get("partial", {}).get("batch")))
        real(path, model, optimizer, meta)

    run(config(tmp_path / "plain", method="biprop+iwr", iwr_every=1), progress=False)
    monkeypatch.setattr(supermask.run.train, "save_checkpoint", recording)
    run(config(tmp_path / "often", method="biprop+iwr", iwr_every=1, checkpoint_every_steps=10), progress=False)
    # every 10th step inside an epoch, each epoch's end; a 10th step ending an epoch (never here) is saved once
    inside = [(s, s - (s // STEPS_PER_EPOCH) * STEPS_PER_EPOCH) for s in range(10, 3 * STEPS_PER_EPOCH, 10)]
    ends = [(e * STEPS_PER_EPOCH, None) for e in (1, 2, 3)]
    assert saved == sorted(inside + ends)
    assert json.loads((tmp_path / "often" / "summary.json").read_text())["iwr_steps"] == 1
    assert_same_run(tmp_path / "plain", tmp_path / "often")


# --------------------------------------------------------------------------------------------------------------
# killed inside an epoch, resumed at the next unseen batch


# The run, with its data iterator stalling forever at one batch: the test kills it there (SIGKILL) once the
# checkpoint before that batch is on disk, so the kill lands after steps the checkpoint does not hold.
STALLING = textwrap.dedent("""
    import os, runpy, sys, time
    import supermask.data

    real = supermask.data.train_batches

    def stalling(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs), start=kwargs.get("start_batch", 0)):
            if kwargs["epoch"] == {epoch} and i == {batch}:
                open(os.path.join({pids!r}, f"{{os.getpid()}}.pid"), "w").close()  # stalled here
                time.sleep(600)
            yield batch

    supermask.data.train_batches = stalling
    sys.argv = ["supermask", *sys.argv[1:]]
    runpy.run_module("supermask", run_name="__main__")
""")


def cli(*argv, script: Path | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [str(script)] if script else ["-m", "supermask"]
    return subprocess.Popen([sys.executable, *command, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            meta = load_tensors(run_dir / "checkpoint.safetensors")[1]
        except ConfigError:  # not written yet
            meta = None
        if meta and meta["step"] >= step:
            return meta
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} in {timeout} s")


def test_a_run_killed_inside_an_epoch_resumes_to_the_same_result(tmp_path, one_thread):
    # IteRand every 7 steps: the run is killed at step 37 of 69, after a checkpoint at step 35 (batch 12 of
    # epoch 2), which an IteRand step also changed; steps 36 and 37 are lost and trained again.
    keys = {"method": "iterand", "iterand_every_steps": 7, "checkpoint_every_steps": 5}
    script = tmp_path / "stalling.py"
    script.write_text(STALLING.format(epoch=1, batch=14, pids=str(tmp_path)))
    killed = cli("train", "digits", *(f"{k}={v}" for k, v in {**ARGS, **keys}.items()), f"out_dir={tmp_path / 'r'}",
                 "-q", script=script)
    try:
        run(config(tmp_path / "whole", **{**keys, "checkpoint_every_steps": None}), progress=False)  # meanwhile
        meta = wait_for_checkpoint(tmp_path / "r", 35, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert (meta["epoch"], meta["step"], meta["partial"]["batch"]) == (1, 35, 12)
    assert [e["step"] for e in meta["schedule"]][-1] == 35  # the IteRand step of step 35 is in it
    assert len(metrics(tmp_path / "r")) == 1 and not (tmp_path / "r" / "summary.json").exists()

    # the same process path as the command line's (which only adds an allocator setting, see supermask.compat)
    run(config(tmp_path / "r", **keys), resume=True, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "r")
    assert [m["epoch"] for m in metrics(tmp_path / "r")] == [1, 2, 3]


def test_a_dense_run_interrupted_inside_an_epoch_resumes_exactly(tmp_path, monkeypatch, one_thread):
    # augmented: skipping batches must also replay their augmentation draws
    run(config(tmp_path / "whole", method="dense", augment=True), progress=False)
    real = supermask.data.train_batches

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs), start=kwargs.get("start_batch", 0)):
            if kwargs["epoch"] == 2 and i == 9:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(supermask.data, "train_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "r", method="dense", augment=True, checkpoint_every_steps=4), progress=False)
    monkeypatch.undo()
    meta = load_tensors(tmp_path / "r" / "checkpoint.safetensors")[1]
    # checkpoints at steps 48 and 52 of epoch 3 (steps 47-69); steps 53-55 are lost and trained again
    assert (meta["epoch"], meta["step"], meta["partial"]["batch"]) == (2, 52, 6)
    assert meta["partial"]["sums"][2] == 6 * 64  # images seen in the epoch so far
    # how often a run checkpoints may change when it is resumed
    run(config(tmp_path / "r", method="dense", augment=True, checkpoint_every_steps=3), resume=True, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "r")


# --------------------------------------------------------------------------------------------------------------
# speed figures


def test_each_epoch_records_images_per_second_and_data_wait(tmp_path, one_thread):
    run(config(tmp_path / "r", epochs=2), progress=False)
    for m in metrics(tmp_path / "r", timings=True):
        # the training pass is part of the epoch, so at least as fast as the whole epoch
        assert m["images_per_s"] >= TRAIN_IMAGES / m["seconds"] * 0.99
        assert 0 <= m["data_wait"] < 0.5  # batches of in-memory data are drawn far faster than trained on


def test_a_slow_data_iterator_shows_as_data_wait_near_one(tmp_path, monkeypatch, one_thread):
    pause, batch = 0.25, 256  # 6 batches
    real = supermask.data.train_batches

    def slow(*args, **kwargs):
        for item in real(*args, **kwargs):
            time.sleep(pause)
            yield item

    monkeypatch.setattr(supermask.data, "train_batches", slow)
    run(config(tmp_path / "r", epochs=1, batch_size=batch), progress=False)
    [m] = metrics(tmp_path / "r", timings=True)
    assert m["data_wait"] > 0.75
    assert m["images_per_s"] <= TRAIN_IMAGES / (6 * pause)  # at least the pauses' time


def test_speed_reaches_the_log_line_and_the_trackers(tmp_path, monkeypatch, capsys, one_thread):
    seen = []

    class Fake:
        name = "fake"

        def scalars(self, values, step):
            seen.append(values)

        def hparams(self, config, metrics):
            pass

        def close(self):
            pass

    monkeypatch.setattr(supermask.run.train, "open_trackers", lambda *a: supermask.run.train.Trackers([Fake()]))
    run(config(tmp_path / "r", epochs=1), progress=True)  # stderr is not a terminal here: a plain line
    [m] = metrics(tmp_path / "r", timings=True)
    [line] = capsys.readouterr().err.splitlines()
    assert f"{m['images_per_s']:.0f} img/s, data wait {m['data_wait']:.0%}" in line
    epoch = [v for v in seen if "epoch/test_acc" in v]
    assert epoch[0]["epoch/images_per_s"] == m["images_per_s"] and epoch[0]["epoch/data_wait"] == m["data_wait"]


def test_a_data_parallel_run_killed_inside_an_epoch_resumes_to_the_same_masks(tmp_path):
    # torchrun, 2 gloo processes: both stall at batch 14 of epoch 2, where both are killed with SIGKILL (torchrun
    # starts each in a session of its own) and torchrun ends.
    keys = [f"{k}={v}" for k, v in ARGS.items()] + ["method=iterand", "iterand_every_steps=7"]
    script = tmp_path / "stalling.py"
    script.write_text(STALLING.format(epoch=1, batch=14, pids=str(tmp_path)))

    def torchrun(*argv, port: int) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        return subprocess.Popen([*command, *map(str, argv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    whole = torchrun("-m", "supermask", "train", "digits", *keys, f"out_dir={tmp_path / 'whole'}", "-q", port=29542)
    killed = torchrun(script, "train", "digits", *keys, "checkpoint_every_steps=5", f"out_dir={tmp_path / 'r'}", "-q",
                      port=29541)
    try:
        meta = wait_for_checkpoint(tmp_path / "r", 35, killed, timeout=240)
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for pid_file in tmp_path.glob("*.pid"):
            os.kill(int(pid_file.stem), signal.SIGKILL)
        if len(list(tmp_path.glob("*.pid"))) < 2:
            killed.kill()
        killed.communicate(timeout=120)
    assert len(list(tmp_path.glob("*.pid"))) == 2
    assert (meta["step"], meta["partial"]["batch"]) == (35, 12)
    assert not (tmp_path / "r" / "summary.json").exists()
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-3000:]
    resumed = torchrun("-m", "supermask", "train", "digits", *keys, "checkpoint_every_steps=5",
                       f"out_dir={tmp_path / 'r'}", "--resume", "-q", port=29543)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    a, b = tmp_path / "whole", tmp_path / "r"
    assert (a / "masks.safetensors").read_bytes() == (b / "masks.safetensors").read_bytes()
    assert (a / "schedule.jsonl").read_text() == (b / "schedule.jsonl").read_text()
    ma, mb = metrics(a), metrics(b)
    # the epoch's loss sum was summed over the processes when saved: the same terms in another order
    assert [m.pop("train_loss") for m in ma] == pytest.approx([m.pop("train_loss") for m in mb], rel=1e-12)
    assert ma == mb
