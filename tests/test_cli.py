"""The `supermask` command line, called in-process through `supermask.cli.main` (plus two real subprocesses)."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from supermask.cli import main
from supermask.config import Config

# small-conv at width 0.25 on 8x8 digits: 16 channels, FC hidden 64, 10 classes; Sequential indices of the layers.
SMALL_CONV_Q = {"0": (16, 1, 3, 3), "2": (16, 16, 3, 3), "6": (64, 16 * 4 * 4), "8": (10, 64)}
FAST = ["width=0.25", "device=cpu"]
SUMMARY_KEYS = {"method", "model", "dataset", "prune_rate", "width", "weight_seed", "score_seed", "epochs", "test_acc",
                "best_test_acc", "params_total", "params_kept", "seconds", "dataset_source"}


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def expected_kept(shapes, tenths_pruned):
    """Kept weights when each layer prunes floor(p * n), p = tenths_pruned / 10, in exact integer arithmetic."""
    return {name: numel(s) - numel(s) * tenths_pruned // 10 for name, s in shapes.items()}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("supermask: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------------------------------------------
# train / eval


def test_train_writes_a_complete_run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "digits", *FAST, "prune_rate=0.7", "epochs=3", f"out_dir={run}", "-q")
    assert code == 0, err

    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "checkpoint.safetensors", "config.yaml", "masks.safetensors", "metrics.jsonl", "summary.json"]

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert set(cfg) == {f.name for f in dataclasses.fields(Config)}
    # resolved: the method-dependent defaults are filled in, the digits config and the overrides applied
    assert cfg["epochs"] == 3 and cfg["lr"] == 0.1 and cfg["weight_init"] == "signed-constant"
    assert cfg["scale_fan"] is False and cfg["augment"] is False
    assert cfg["prune_rate"] == 0.7 and cfg["width"] == 0.25 and cfg["model"] == "small-conv"
    assert cfg["out_dir"] == str(run)

    lines = (run / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0.0 <= m["test_acc"] <= 1.0 and m["train_loss"] > 0

    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["method"], summary["model"], summary["dataset"]) == ("edge-popup", "small-conv", "digits")
    assert (summary["prune_rate"], summary["width"], summary["epochs"]) == (0.7, 0.25, 3)
    assert (summary["weight_seed"], summary["score_seed"]) == (0, 0)
    assert summary["dataset_source"] == "sklearn:load_digits"
    assert summary["test_acc"] == metrics[-1]["test_acc"]
    assert summary["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert summary["seconds"] > 0
    kept = expected_kept(SMALL_CONV_Q, 7)
    assert summary["params_total"] == sum(numel(s) for s in SMALL_CONV_Q.values()) == 19472
    assert summary["params_kept"] == sum(kept.values()) == 44 + 692 + 4916 + 192

    saved_masks = load_file(run / "masks.safetensors")
    assert set(saved_masks) == set(SMALL_CONV_Q)
    for name, m in saved_masks.items():
        assert m.dtype == torch.bool
        assert tuple(m.shape) == SMALL_CONV_Q[name]
        assert int(m.sum()) == kept[name], name

    ckpt = load_file(run / "checkpoint.safetensors")
    for name, shape in SMALL_CONV_Q.items():
        assert tuple(ckpt[f"model.{name}.parametrizations.weight.original"].shape) == shape
        assert tuple(ckpt[f"model.{name}.parametrizations.weight.0.scores"].shape) == shape

    assert f"{100 * summary['test_acc']:.2f}%" in out
    assert str(run) in out
    assert "Traceback" not in err


def test_eval_reports_the_recorded_accuracy(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "digits", *FAST, "epochs=2", f"out_dir={run}", "-q")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    code, out, err = cli(capsys, "eval", run, "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    assert result["test_acc"] == summary["test_acc"]
    assert result["recorded_test_acc"] == summary["test_acc"]
    assert result["epoch"] == 2
    assert (result["params_total"], result["params_kept"]) == (summary["params_total"], summary["params_kept"])


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert_one_line_error(*cli(capsys, "eval", tmp_path), str(tmp_path), "config.yaml")


# --------------------------------------------------------------------------------------------------------------
# help, override forms, configs


def test_train_help_lists_every_config_key_and_builtin_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert re.search(rf"^\s+{re.escape(f.name)}\s", out, re.MULTILINE), f.name
    builtins = re.search(r"built-in configs: (.*)", out).group(1).split(", ")
    assert {"conv2", "conv4", "conv6", "conv8", "resnet18", "digits"} <= set(builtins)


def test_override_form_with_config_name(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "digits", "method=biprop", "prune_rate=0.9", "width=0.25", "epochs=1",
                       "device=cpu", f"out_dir={run}", "-q")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["method"], summary["prune_rate"], summary["width"], summary["epochs"]) == ("biprop", 0.9, 0.25, 1)
    assert (summary["model"], summary["dataset"]) == ("small-conv", "digits")
    assert summary["params_kept"] == sum(expected_kept(SMALL_CONV_Q, 9).values()) == 15 + 231 + 1639 + 64
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # Biprop's own defaults: Kaiming normal with the fan scaled by the keep fraction
    assert cfg["weight_init"] == "kaiming-normal" and cfg["scale_fan"] is True
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_overrides_without_config_name_use_the_default_config(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "width=0.25", "epochs=1", "device=cpu", f"out_dir={run}", "-q")
    assert code == 0, err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # the digits config (not the dataclass defaults: conv4, cifar10, batch size 128)
    assert (cfg["model"], cfg["dataset"], cfg["batch_size"]) == ("small-conv", "digits", 64)
    assert cfg["width"] == 0.25 and cfg["epochs"] == 1


def test_overrides_after_a_flag(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "digits", "-q", "width=0.25", "epochs=1", "device=cpu", f"out_dir={run}",
                       "score_seed=7")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["width"], summary["epochs"], summary["score_seed"]) == (0.25, 1, 7)


def test_stray_argument_after_a_flag_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "digits", "-q", "conv4", f"out_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    assert "conv4" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_configs_lists_the_builtin_names(capsys):
    code, out, _ = cli(capsys, "configs")
    assert code == 0
    assert {"conv2", "conv4", "conv6", "conv8", "resnet18", "digits"} <= set(out.split())


def test_configs_shows_one_config_resolved(capsys):
    code, out, _ = cli(capsys, "configs", "conv4")
    assert code == 0
    values = {}
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.partition(": ")
        values[key] = json.loads(value)
    assert set(values) == {f.name for f in dataclasses.fields(Config)}
    assert (values["model"], values["dataset"], values["method"]) == ("conv4", "cifar10", "edge-popup")
    # resolved from the paper's recipe, not left as None
    assert values["epochs"] == 250 and values["lr"] == 0.1
    assert values["weight_init"] == "signed-constant" and values["scale_fan"] is False


def test_configs_unknown_name(capsys):
    assert_one_line_error(*cli(capsys, "configs", "conv5"), "conv5")


# --------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the value, no traceback, no run dir


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [small-conv\nwidth: : 0.25\n")
    return path


BAD_INPUTS = {
    "unknown model": lambda t: (["model=foo"], ["'foo'", "model"]),
    "unknown method": lambda t: (["method=edge-pop"], ["'edge-pop'", "method"]),
    "unknown dataset": lambda t: (["dataset=nonexistent_ds"], ["nonexistent_ds"]),
    "unknown key": lambda t: (["foo=1"], ["'foo'"]),
    "prune_rate 1": lambda t: (["prune_rate=1.0"], ["prune_rate", "1.0"]),
    "prune_rate negative": lambda t: (["prune_rate=-0.1"], ["prune_rate", "-0.1"]),
    "missing data_dir": lambda t: (["dataset=cifar10", f"data_dir={t / 'no_data_here'}"], [t / "no_data_here"]),
    "missing dataset path": lambda t: ([f"dataset={t / 'no_such_folder'}"], [t / "no_such_folder"]),
    "non-numeric epochs": lambda t: (["epochs=abc"], ["epochs", "'abc'"]),
    "non-numeric width": lambda t: (["width=wide"], ["width", "'wide'"]),
    "malformed yaml": lambda t: ([_bad_yaml(t)], [t / "bad.yaml", "YAML"]),
    "missing config file": lambda t: ([t / "missing.yaml"], [t / "missing.yaml"]),
    "unknown config name": lambda t: (["conv5"], ["'conv5'"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_creates_nothing(case, tmp_path, capsys):
    args, needles = BAD_INPUTS[case](tmp_path)
    run = tmp_path / "run"
    # CONFIG (a file or name) must come first; the bad override comes last so it wins over the good ones
    first = [a for a in args if "=" not in str(a)]
    rest = [a for a in args if "=" in str(a)]
    code, out, err = cli(capsys, "train", *first, *FAST, "epochs=1", f"out_dir={run}", *rest, "-q")
    assert_one_line_error(code, out, err, *needles)
    assert out == ""
    assert not run.exists()


def test_out_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    for out_dir in (target, target / "sub"):
        code, out, err = cli(capsys, "train", *FAST, "epochs=1", f"out_dir={out_dir}", "-q")
        assert_one_line_error(code, out, err, out_dir)
    assert target.read_text() == "not a folder"


def _finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "digits", *FAST, "epochs=1", f"out_dir={run}", "-q"]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    return run, argv


def test_existing_run_without_resume(tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    before = snapshot(run)
    assert_one_line_error(*cli(capsys, *argv), "--resume", run)
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_on_resume(damage, tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    ckpt = run / "checkpoint.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"garbage": b"\x07not a safetensors file" * 50, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    before = snapshot(run)
    assert_one_line_error(*cli(capsys, *argv, "--resume"), "checkpoint.safetensors")
    assert snapshot(run) == before


def test_resume_with_a_changed_config(tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    before = snapshot(run)
    assert_one_line_error(*cli(capsys, *argv, "prune_rate=0.8", "--resume"), "prune_rate")
    assert snapshot(run) == before


def test_resume_of_a_finished_run_keeps_its_results(tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    metrics = (run / "metrics.jsonl").read_text()
    masks = (run / "masks.safetensors").read_bytes()
    code, _, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert (run / "metrics.jsonl").read_text() == metrics
    assert (run / "masks.safetensors").read_bytes() == masks


# --------------------------------------------------------------------------------------------------------------
# the real console script


def _console(*argv, cwd):
    script = shutil.which("supermask", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "supermask"]
    return subprocess.run([*cmd, *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_console_script_bad_value(tmp_path):
    run = tmp_path / "run"
    proc = _console("train", "digits", "prune_rate=1.0", "epochs=1", f"out_dir={run}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supermask: error: ") and "1.0" in lines[0]
    assert proc.stdout == ""
    assert not run.exists()


def test_python_m_supermask_bad_model(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "supermask", "train", "model=foo", f"out_dir={run}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'foo'" in lines[0]
    assert not run.exists()


def test_resume_without_out_dir_is_refused(capsys):
    code, out, err = cli(capsys, "train", "digits", "epochs=1", "--resume")
    assert_one_line_error(code, out, err, "out_dir")
