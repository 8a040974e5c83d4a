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
from supermask.run.config import Config, make_config
from supermask.run.schedule import never_fires

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
    # the digits config (the default job, which the dataclass defaults equal)
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
    lines = {line.split()[0]: line for line in out.splitlines()}
    # each with what it is; a paper's recipe names its source
    assert "ksreenivasan/pruning_is_enough" in lines["gem-miner"] and "kosnil/signed_supermasks" in lines["signed-supermask"]
    assert "8x8 digits" in lines["digits"]


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


def test_resume_names_every_differing_key_at_once(tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    code, out, err = cli(capsys, *argv, "prune_rate=0.8", "width=0.5", "--resume")
    assert_one_line_error(code, out, err, "prune_rate=0.5 there, prune_rate=0.8 now", "width=0.25 there, width=0.5 now")


def test_resume_takes_the_runs_own_config(tmp_path, capsys):
    run, _ = _finished_run(tmp_path, capsys)  # FAST's keys differ from the default config's
    masks = (run / "masks.safetensors").read_bytes()
    code, _, err = cli(capsys, "train", f"out_dir={run}", "--resume", "-q")
    assert code == 0, err
    assert (run / "masks.safetensors").read_bytes() == masks
    # the overrides given with it are checked against the run, all at once
    assert_one_line_error(*cli(capsys, "train", f"out_dir={run}", "epochs=3", "--resume"), "epochs=1 there, epochs=3 now")


def test_resume_may_change_what_changes_no_result(tmp_path, capsys):
    run, argv = _finished_run(tmp_path, capsys)
    code, _, err = cli(capsys, *argv, "logger=tensorboard", "num_workers=0", "checkpoint_every_steps=5", "--resume")
    assert code == 0, err


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


# --------------------------------------------------------------------------------------------------------------
# output files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_respect_the_umask(tmp_path, umask, mode):
    import os

    from supermask.run.checkpoint import save_tensors, write_csv, write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_json(tmp_path / "a.json", {"x": 2})  # replacing a file gives the new one the same mode
        save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
        write_csv(tmp_path / "r.csv", [{"a": 1}], ["a"])
    finally:
        os.umask(old)
    for name in ("a.json", "t.safetensors", "r.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "r.csv", "t.safetensors"]  # no temp left


# --------------------------------------------------------------------------------------------------------------
# values refused before the run directory exists; schedules; logs


def test_value_refused_late_leaves_nothing_and_a_rerun_works(tmp_path, capsys):
    run = tmp_path / "run"
    for bad in ("label_smoothing=2", "nesterov=true", "skip_layers=*", "data_seed=-1", "epochs=.inf", "momentum=.nan"):
        extra = ["momentum=0"] if bad == "nesterov=true" else []
        code, out, err = cli(capsys, "train", "digits", *FAST, "epochs=1", f"out_dir={run}", *extra, bad, "-q")
        assert_one_line_error(code, out, err, bad.split("=")[0])
        assert not run.exists(), bad
    code, _, err = cli(capsys, "train", "digits", *FAST, "epochs=1", f"out_dir={run}", "label_smoothing=0.1", "-q")
    assert code == 0, err


def test_skip_every_layer_is_one_line(tmp_path, capsys):
    code, out, err = cli(capsys, "train", *FAST, "epochs=1", "skip_layers=[first, '*']", f"out_dir={tmp_path / 'r'}")
    assert_one_line_error(code, out, err, "skip_layers", "nothing is left to search")


def test_convert_takes_one_pattern_as_a_string():
    import supermask

    def skipped(skip):
        model = supermask.convert(supermask.build_model("small-conv", in_channels=1, image_size=8, width=0.25),
                                  "edge-popup", 0.5, skip=skip)
        return [name for name, _ in model.named_modules() if name in SMALL_CONV_Q and name not in supermask.masks(model)]

    assert skipped("first") == skipped(["first"]) == ["0"]
    assert skipped("8") == ["8"]


def test_schedule_steps_are_counted_in_the_summary_and_a_silent_schedule_warns(tmp_path, capsys):
    def train(name, *overrides):
        code, _, err = cli(capsys, "train", "digits", *FAST, f"out_dir={tmp_path / name}", *overrides, "-q")
        assert code == 0, err
        return json.loads((tmp_path / name / "summary.json").read_text()), err

    # biprop+iwr on 4 epochs: the paper's F = 10 of 250 epochs scales to 1, firing after epochs t = 1, 2 (not 3, the last)
    summary, err = train("iwr", "method=biprop+iwr", "epochs=4", "batch_size=512")
    assert (summary["iwr_steps"], summary["iterand_steps"]) == (2, 0) and "warning" not in err
    # 1438 digits at batch 64 are 23 steps: every 10 steps fires at 10 and 20
    summary, err = train("it", "method=iterand", "iterand_every_steps=10", "epochs=1")
    assert (summary["iwr_steps"], summary["iterand_steps"]) == (0, 2) and "warning" not in err
    # the paper's 300 steps never come in 23, nor does any IWR step in 2 epochs (the only t > 0 is the last)
    one_epoch = make_config("digits", {"method": "iterand", "epochs": 1})
    assert "iterand_every_steps=300 fires no IteRand step" in never_fires(one_epoch, 23)
    assert never_fires(one_epoch, 300) is None
    assert "iwr_every=1" in never_fires(make_config("digits", {"method": "biprop+iwr", "epochs": 2}), 23)
    assert never_fires(make_config("digits", {"method": "biprop+iwr", "epochs": 3}), 23) is None


def test_progress_is_a_plain_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "digits", *FAST, "epochs=2", "method=edge-popup+iwr", f"out_dir={tmp_path / 'r'}")
    assert code == 0, err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
    warning, *lines = err.splitlines()
    assert warning.startswith("supermask: warning: iwr_every=1 (warm-up 0) fires no IWR step in 2 epochs")
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert f"test loss {metrics[1]['test_loss']:.4f} acc {metrics[1]['test_acc']:.4f}" in lines[1]


# --------------------------------------------------------------------------------------------------------------
# small things: --version, previewing a shorthand, usage errors, a reader that leaves early


def test_version(capsys):
    import supermask

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"supermask {supermask.__version__}"


def test_configs_previews_a_shorthand_with_overrides(capsys):
    code, out, err = cli(capsys, "configs", "conv4", "method=biprop+iwr", "epochs=125")
    assert code == 0, err
    values = {k: json.loads(v) for k, _, v in (line.partition(": ") for line in out.splitlines()[1:])}
    # F = 10 of the paper's 250 epochs, scaled to 125
    assert (values["method"], values["iwr_every"], values["iwr_rate"], values["epochs"]) == ("biprop", 5, 0.2, 125)
    code, out, _ = cli(capsys, "configs", "method=iterand")
    assert code == 0 and '"small-conv"' in out and "iterand_every_steps: 300" in out


def test_usage_errors_are_one_line(capsys):
    for argv in (["sweep", "x.yaml", "--workers", "-3"], ["sweep", "x.yaml", "--workers", "two"], ["trian"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("supermask") and "--help" in err


def test_a_reader_that_leaves_early_is_no_traceback():
    cmd = [sys.executable, "-c", "import sys; from supermask.cli import main; sys.exit(main(sys.argv[1:]))",
           "configs", "mnist"]
    # `supermask configs mnist | head -1`, with the reader gone before anything is written
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


# --------------------------------------------------------------------------------------------------------------
# sweep files


def _sweep_file(tmp_path, text: str | bytes) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("body, needle", [
    ("base: digits\nset: [1]\nout_dir: {out}\n", "set must map"),
    ("base: digits\nworkers: two\nout_dir: {out}\n", "workers must be a whole number >= 1, got 'two'"),
    ("base: digits\nworkers: -2\nout_dir: {out}\n", "workers"),
    ("base: digits\nretries: 1.5\nout_dir: {out}\n", "retries"),
    ("base: digits\ngpus_per_cell: half\nout_dir: {out}\n", "gpus_per_cell must be a number >= 0, got 'half'"),
    ("base: digits\ngpus_per_cell: .nan\nout_dir: {out}\n", "gpus_per_cell"),
    ("base: [digits]\nout_dir: {out}\n", "base must be"),
    ("base: digits\nout_dir: {file}\n", "is a file"),
    ("base: digits\nout_dir: {file}/sub\n", "is a file"),
    ("base: digits\nset: {{epochs: .inf}}\nout_dir: {out}\n", "epochs=inf must be an integer in [1, 9223372036854775807]"),
])
def test_bad_sweep_files_are_one_line(tmp_path, capsys, body, needle):
    (tmp_path / "taken").write_text("a file")
    path = _sweep_file(tmp_path, body.format(out=tmp_path / "out", file=tmp_path / "taken"))
    assert_one_line_error(*cli(capsys, "sweep", path), needle)
    assert not (tmp_path / "out").exists()


def test_non_utf8_sweep_file(tmp_path, capsys):
    path = _sweep_file(tmp_path, b"base: digits\nout_dir: caf\xe9\n")
    assert_one_line_error(*cli(capsys, "sweep", path), "not UTF-8")


def test_a_single_image_slice_on_a_1x1_batchnorm_map_is_one_line(tmp_path, capsys):
    # digits has 1438 training images: batches of 479 leave a last batch of one image, and ResNet-50's stem and
    # first stages shrink 8x8 digits to 1x1 maps, where BatchNorm cannot normalize a single value per channel
    code = main(["train", "digits", "model=resnet50", "width=0.05", "batch_size=479", "epochs=1", "device=cpu",
                 f"out_dir={tmp_path / 'r'}", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "epoch 1 step 4: BatchNorm got one value per channel (1 image(s)" in err


def test_every_argument_of_every_command_is_documented(capsys):
    import argparse

    from supermask.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    undocumented = [f"{name} {a.dest}" for name, sub in commands.items() for a in sub._actions if not a.help]
    assert undocumented == []
    with pytest.raises(SystemExit):
        main(["path", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Interpolate the two runs' scores" in text and "(1 - t) |S_A| + t |S_B|" in text


def test_gpus_per_cell_without_ray_is_a_one_line_warning(tmp_path, capsys):
    path = _sweep_file(tmp_path, f"base: digits\nset: {{width: 0.25, epochs: 1, device: cpu}}\n"
                                 f"grid: {{score_seed: [0]}}\ngpus_per_cell: 0.5\nout_dir: {tmp_path / 'out'}\n")
    code, out, err = cli(capsys, "sweep", path, "-q")
    assert code == 0, err
    assert err.strip().splitlines() == ["supermask: warning: gpus_per_cell=0.5 reserves GPUs only on Ray (--ray); the "
                                        "1 local worker(s) share this machine's devices"]
