"""Random config values and random files fed to every subcommand, in-process: each call ends with exit 0, or with
exit 2 and one line on stderr, never with a traceback, and a refused train creates no run directory.

Seeded, so a failure reproduces; training is cut to 3 batches an epoch and 2 epochs, so a value that passes
validation still runs the real loop (and `_finish`) on digits in a fraction of a second.
"""

import itertools
import json
import random
import shutil

import pytest

import supermask.data
import supermask.multi.sweep
import supermask.run.loop
import supermask.run.train
from supermask.cli import main
from supermask.run.config import FIELDS

# YAML spellings of hostile values: non-finite, huge, negative, wrong types, empty, YAML syntax.
VALUES = ["", ".inf", "-.inf", ".nan", "-1", "0", "1e400", "99999999999999999999999", "abc", "[1, 2]", "{a: 1}",
          "true", "null", "*", "~", "0.5", "2", "1.5", "'x'", "é", "[]", "!!binary aGk=", "&a x", "[first, '*']",
          "conv4", "biprop+iwr", "iterand", "cifar1", "cuda:7", "adam", "constant", "-0.0", "1e-320", "keep"]
FAST = ["digits", "width=0.25", "epochs=1", "batch_size=512", "device=cpu", "-q"]


class Stop(Exception):
    """Raised by the patched loop once a run has shown it trains: the value passed validation."""


EPOCHS = [0]  # epochs of the current call, reset by `call`


@pytest.fixture(autouse=True)
def short_training(monkeypatch):
    real_batches, real_end = supermask.data.train_batches, supermask.run.loop.end_of_epoch
    monkeypatch.setattr(supermask.data, "train_batches", lambda *a, **k: itertools.islice(real_batches(*a, **k), 3))
    def end_of_epoch(*a, **k):
        EPOCHS[0] += 1
        if EPOCHS[0] > 2:
            raise Stop
        return real_end(*a, **k)

    monkeypatch.setattr(supermask.run.loop, "end_of_epoch", end_of_epoch)
    monkeypatch.setattr(supermask.multi.sweep, "run_sweep", lambda sweep, **k: {"finished": 0, "cells": len(sweep.cells)})


def call(capsys, argv):
    """(exit code, stderr) of one in-process call; argparse's own exits count as exit codes."""
    EPOCHS[0] = 0
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    except Stop:
        code = 0
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], (argv, err)
    return code, err


def random_overrides(rng: random.Random, n: int) -> list[str]:
    keys = rng.sample(sorted(FIELDS), n)
    return [f"{k}={rng.choice(VALUES)}" for k in keys if k != "out_dir"]


def test_configs_with_random_values(capsys):
    rng = random.Random(0)
    for _ in range(300):
        call(capsys, ["configs", rng.choice(["digits", "conv4", "resnet18"]), *random_overrides(rng, rng.randint(1, 3))])


def test_train_with_random_values(tmp_path, capsys):
    rng = random.Random(1)
    for i in range(25):
        run = tmp_path / f"run{i}"
        overrides = random_overrides(rng, rng.randint(1, 2))
        code, err = call(capsys, ["train", *FAST, f"out_dir={run}", *overrides])
        if code == 2:
            assert not run.exists(), (overrides, err)  # validated before anything was created


def random_text(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    if kind == 1:
        return rng.choice([b"", b"\xff\xfe\x00m", b"- a\n- b\n", b"3", b"{", b"null", b"[1, {a: }]", b"\xe9t\xe9: 1"])
    keys = sorted(FIELDS) + ["base", "set", "grid", "out_dir", "workers", "gpus_per_cell", "retries", "together",
                             "group_dir", "runs", "config", "overrides", "nonsense"]
    lines = [f"{rng.choice(keys)}: {rng.choice(VALUES)}" for _ in range(rng.randint(1, 4))]
    if kind == 2:
        lines.append(f"set: {{{rng.choice(sorted(FIELDS))}: {rng.choice(VALUES)}}}")
    if kind == 3:
        lines.append(f"grid: {{{rng.choice(sorted(FIELDS))}: [{rng.choice(VALUES)}]}}")
    if kind == 4:
        return json.dumps({"group_dir": "g", "runs": [{"config": rng.choice(["digits", 3, None, ["x"]]),
                                                       "overrides": {rng.choice(sorted(FIELDS)): rng.choice(VALUES)}}]
                           }).encode()
    return "\n".join(lines).encode()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", *FAST, f"out_dir={run}"]) == 0
    return run


def test_random_files_to_every_subcommand(tmp_path, capsys, finished_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(2)
    net = tmp_path / "net.smask"
    assert main(["export", str(finished_run), "-o", str(net)]) == 0
    for i in range(30):
        f = tmp_path / f"in{i}.yaml"
        f.write_bytes(random_text(rng))
        out = tmp_path / f"out{i}"
        call(capsys, ["configs", f])
        call(capsys, ["train", f, "width=0.25", "epochs=1", "batch_size=512", "device=cpu", f"out_dir={out}", "-q"])
        call(capsys, ["sweep", f, "-q"])
        call(capsys, ["together", f, "-q"])
        call(capsys, ["eval", f])
        if i % 4 == 0:  # a valid file trains two runs
            call(capsys, ["study", f, f"out_dir={out}", "epochs=1", "width=0.25", "--score-seeds", "2", "-q"])
        smask = tmp_path / f"in{i}.smask"
        shutil.copy(f, smask)
        call(capsys, ["eval", smask])
        call(capsys, ["predict", smask, f])
        call(capsys, ["predict", net, f])  # random bytes for an image


@pytest.mark.parametrize("damaged", ["config.yaml", "checkpoint.safetensors", "masks.safetensors", "summary.json"])
def test_damaged_run_files(tmp_path, capsys, finished_run, damaged):
    rng = random.Random(3)
    for i in range(8):
        run = tmp_path / f"run{i}"
        shutil.copytree(finished_run, run)
        (run / damaged).write_bytes(random_text(rng))
        call(capsys, ["eval", run, "--device", "cpu"])
        call(capsys, ["train", *FAST, f"out_dir={run}", "--resume"])
        call(capsys, ["export", run, "-o", tmp_path / f"x{i}.smask"])
        call(capsys, ["compare", run, finished_run, "--out", tmp_path / f"c{i}", "--no-plots"])
        if damaged != "config.yaml":
            call(capsys, ["norms", run, "--out", tmp_path / f"n{i}"])


def test_outputs_that_cannot_be_written(tmp_path, capsys, finished_run):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out in (taken, taken / "sub"):
        assert call(capsys, ["compare", finished_run, finished_run, "--out", out, "--no-plots"])[0] == 2
        assert call(capsys, ["norms", finished_run, "--out", out])[0] == 2
        assert call(capsys, ["path", finished_run, finished_run, "--out", out, "--steps", "2"])[0] == 2
        assert call(capsys, ["train", *FAST, f"out_dir={out}"])[0] == 2
    assert taken.read_text() == "a file"
