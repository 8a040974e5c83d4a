"""Studies reuse a finished run only when it was trained with the requested config."""

from pathlib import Path

import pytest

import supermask.analysis.landscape
import supermask.run.train
from supermask import ConfigError
from supermask.run.checkpoint import atomic_write_text, write_json
from supermask.cli import main
from supermask.run.config import dump_yaml, make_config
from supermask.run.rundir import differing_keys
from supermask.multi.study import run_study, study_configs


def fake_run(cfg, *, resume=False, progress=True):
    """What a finished run leaves behind, as far as reuse looks: its resolved config and its summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.augment = False if cfg.augment is None else cfg.augment  # resolved from the dataset by a real run
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    write_json(out / "summary.json", {"test_acc": 0.5, "epochs": cfg.epochs})
    return {"test_acc": 0.5}


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A study of 3 runs trained with epochs=3; training and comparing are faked (reuse reads only files)."""
    trains = []
    monkeypatch.setattr(supermask.run.train, "run", lambda cfg, **kw: (trains.append(cfg.out_dir), fake_run(cfg))[1])
    monkeypatch.setattr(supermask.analysis.landscape, "write_comparison", lambda dirs, out: {"by_method_pair": {}})
    overrides = {"epochs": 3, "out_dir": str(tmp_path / "st")}
    run_study("digits", overrides, score_seeds=3, progress=False, log=lambda *_: None)
    assert len(trains) == 3
    trains.clear()
    return overrides, trains


def test_same_config_is_reused(trained):
    overrides, trains = trained
    logs = []
    run_study("digits", overrides, score_seeds=3, progress=False, log=logs.append)
    assert trains == [] and all(line.endswith(": reused (finished before), test accuracy 50.00%") for line in logs)


def test_each_run_says_what_happened_to_it(tmp_path, monkeypatch):
    monkeypatch.setattr(supermask.run.train, "run", lambda cfg, **kw: fake_run(cfg))
    monkeypatch.setattr(supermask.analysis.landscape, "write_comparison", lambda dirs, out: {"by_method_pair": {}})
    overrides = {"epochs": 3, "out_dir": str(tmp_path / "st")}
    configs = study_configs(make_config("digits", overrides), 3)
    fake_run(configs[0])  # finished before
    fake_run(configs[1])  # killed after a checkpoint: its config and checkpoint, no summary
    Path(configs[1].out_dir, "summary.json").rename(Path(configs[1].out_dir, "checkpoint.safetensors"))
    logs = []
    run_study("digits", overrides, score_seeds=3, progress=False, log=logs.append)
    assert [line.split(": ", 1)[1] for line in logs] == ["reused (finished before), test accuracy 50.00%",
                                                         "resumed from its checkpoint, test accuracy 50.00%",
                                                         "trained, test accuracy 50.00%"]


def test_runs_trained_together_are_not_called_reused(tmp_path, monkeypatch):
    import supermask.multi.together

    monkeypatch.setattr(supermask.multi.together, "train_together", lambda cfgs, group_dir, **kw: [fake_run(c) for c in cfgs])
    monkeypatch.setattr(supermask.analysis.landscape, "write_comparison", lambda dirs, out: {"by_method_pair": {}})
    logs = []
    run_study("digits", {"epochs": 3, "out_dir": str(tmp_path / "st")}, score_seeds=2, progress=False,
              log=logs.append, together=True)
    assert logs[0] == "trained 2 runs together: test accuracies 50.00 50.00%"
    assert [line.split(": ", 1)[1] for line in logs[1:]] == ["trained together (2 runs), test accuracy 50.00%"] * 2


def test_changed_config_is_refused_naming_the_keys(trained):
    overrides, trains = trained
    with pytest.raises(ConfigError, match=r"epochs=3 .*epochs=5.*--retrain") as e:
        run_study("digits", {**overrides, "epochs": 5, "lr": 0.05}, score_seeds=3, progress=False, log=print)
    assert "lr=" in str(e.value) and "\n" not in str(e.value)
    assert trains == []  # refused before anything trained


def test_retrain_trains_the_stale_runs_again(trained):
    overrides, trains = trained
    logs = []
    run_study("digits", {**overrides, "epochs": 5}, score_seeds=3, progress=False, log=logs.append, retrain=True)
    assert len(trains) == 3 and not any("reused" in line for line in logs)
    assert all(make_config(str(Path(d) / "config.yaml")).epochs == 5 for d in trains)


def test_the_cli_refuses_in_one_line(trained, capsys):
    overrides, trains = trained
    assert main(["study", "digits", "epochs=5", f"out_dir={overrides['out_dir']}", "--score-seeds", "3", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs" in err and "--retrain" in err and len(err.splitlines()) == 1 and trains == []


def test_differing_keys(tmp_path):
    cfg = make_config("digits", {"out_dir": str(tmp_path / "r"), "epochs": 3})
    fake_run(cfg)
    same = make_config("digits", {"out_dir": str(tmp_path / "elsewhere"), "epochs": 3})
    assert differing_keys(same, tmp_path / "r") == []  # out_dir is where, not what; augment is resolved at run time
    other = make_config("digits", {"epochs": 4, "method": "biprop"})
    assert differing_keys(other, tmp_path / "r") == ["method", "weight_init", "scale_fan", "biprop_grad",
                                                    "biprop_alpha_count", "epochs"]
    # a tracker, the decoding processes and checkpoints inside an epoch change no result
    run_only = make_config("digits", {"epochs": 3, "logger": "tensorboard", "num_workers": 2, "checkpoint_every_steps": 5})
    assert differing_keys(run_only, tmp_path / "r") == []
    assert study_configs(same, 2)[1].score_seed == 1


def test_a_relative_data_path_matches_the_runs_resolved_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    fake_run(make_config("digits", {"out_dir": str(tmp_path / "r"), "dataset": str(tmp_path / "imgs")}))
    assert differing_keys(make_config("digits", {"dataset": "imgs"}), tmp_path / "r") == []
    (tmp_path / "other").mkdir()
    assert differing_keys(make_config("digits", {"dataset": "other"}), tmp_path / "r") == ["dataset"]
