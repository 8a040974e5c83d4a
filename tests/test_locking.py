"""Processes and run directories: one writer per run directory, and a sweep's workers die with the sweep."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supermask.cli import main

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent pid), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has stopped running


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def _stop(pids) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _train_command(out_dir: Path, *extra: str) -> list[str]:
    # long enough to still be training whenever the test looks (the test kills it)
    return [sys.executable, "-m", "supermask", "train", "digits", "width=0.25", "epochs=100000", "device=cpu",
            f"out_dir={out_dir}", "-q", *extra]


@linux_only
def test_a_sweep_killed_with_sigkill_leaves_no_worker_behind(tmp_path):
    out = tmp_path / "sweep"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"base: digits\nset: {{width: 0.25, epochs: 100000, device: cpu}}\n"
                    f"grid: {{score_seed: [0, 1]}}\nworkers: 2\nout_dir: {out}\n")
    sweep = subprocess.Popen([sys.executable, "-m", "supermask", "sweep", str(spec), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        cells = [out / "cells" / "score_seed=0", out / "cells" / "score_seed=1"]
        # both workers are training: each has written its run's config
        _wait_for(lambda: all((c / "config.yaml").exists() for c in cells), 300, "both cells to start")
        workers = _children(sweep.pid)
        assert len(workers) == 2
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, f"workers {workers} to die with their sweep")
    finally:
        workers = workers or _children(sweep.pid)
        _stop([sweep.pid, *workers])


@linux_only
def test_a_second_writer_is_refused_while_a_run_trains(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_train_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        _wait_for(lambda: (out / "checkpoint.safetensors").exists(), 300, "the first run's first checkpoint")
        # the very same run continued by another process: valid on its own, but two writers would interleave
        second = subprocess.Popen(_train_command(out, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            _, err = second.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("a second process kept training in a run directory that another one writes") from None
        assert second.returncode == 2
        assert len(err.strip().splitlines()) == 1 and str(out) in err and "in use by another process" in err
        assert first.poll() is None  # the first writer carries on
    finally:
        _stop([first.pid] + ([second.pid] if second else []))
        first.wait()


def test_a_locked_run_directory_refuses_train_and_together_and_is_free_again_after(tmp_path, capsys):
    from supermask.run.lock import run_lock
    from supermask.multi.together import train_together

    out = tmp_path / "run"
    args = ["train", "digits", "width=0.25", "epochs=1", "device=cpu", f"out_dir={out}", "-q"]
    with run_lock(out):  # held by this process as by any other: flock locks belong to one open file
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out} is in use by another process (pid {os.getpid()})" in err

        from supermask.run.config import make_config
        cfg = make_config("digits", {"width": 0.25, "epochs": 1, "device": "cpu", "out_dir": str(out)})
        with pytest.raises(Exception, match="in use by another process"):
            train_together([cfg], tmp_path / "group", progress=False)
    assert not (out / "config.yaml").exists()  # refused before writing anything
    assert main(args) == 0  # released: the directory holds only its lock file, which does not count as a run
    assert main(args + ["--resume"]) == 0  # and each run releases its lock when it ends


def test_a_resumed_run_removes_the_temporary_files_of_writes_a_kill_cut_off(tmp_path):
    from supermask.run.checkpoint import remove_orphan_temps
    from supermask.run.config import make_config
    from supermask.run.train import run

    out = tmp_path / "run"
    run(make_config("digits", {"epochs": 1, "width": 0.25, "out_dir": str(out)}), progress=False)
    orphan = out / ".checkpoint.safetensors.0123456789ab.tmp"  # as atomic_write_bytes names one
    orphan.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"  # not a name the writer makes: left alone
    keep.write_text("mine")
    run(make_config("digits", {"epochs": 1, "width": 0.25, "out_dir": str(out)}), resume=True, progress=False)
    assert not orphan.exists() and keep.read_text() == "mine"
    assert remove_orphan_temps(tmp_path / "missing") == []
