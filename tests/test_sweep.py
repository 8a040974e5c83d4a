"""Sweeps: grid expansion and validation, local workers, restarts, worker deaths, and a local Ray instance."""

import csv
import json
import re
import sys

import pytest
import yaml

import supermask.multi.sweep as sweep_mod
from supermask import ConfigError
from supermask.cli import main
from supermask.multi.sweep import load_sweep, run_sweep


def _spec(tmp_path, **extra):
    spec = {"base": "digits", "set": {"model": "small-conv", "width": 0.25, "epochs": 1},
            "grid": {"method": ["edge-popup", "biprop"], "score_seed": [0, 1]}, "out_dir": str(tmp_path / "sw"),
            "workers": 2, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expansion_and_validation(tmp_path):
    sweep = load_sweep(_spec(tmp_path))
    assert [c.name for c in sweep.cells] == ["method=edge-popup-score_seed=0", "method=edge-popup-score_seed=1",
                                             "method=biprop-score_seed=0", "method=biprop-score_seed=1"]
    assert all(c.overrides["epochs"] == 1 for c in sweep.cells)
    for bad, fragment in [({"grid": {"prune_rate": [0.5, 1.5]}}, "prune_rate"), ({"colour": 1}, "unknown sweep key"),
                          ({"grid": {"method": []}}, "non-empty"), ({"grid": {"nope": [1]}}, "unknown config key")]:
        with pytest.raises(ConfigError, match=fragment):
            load_sweep(_spec(tmp_path, **bad))


def test_local_sweep_then_restart_runs_only_missing_cells(tmp_path, monkeypatch, capsys):
    real = sweep_mod.run_cell_process
    launched = []

    def killed_after_two(command, env):
        if len(launched) >= 2:
            raise KeyboardInterrupt  # the sweep is killed with two cells done
        launched.append(command)
        return real(command, env)

    monkeypatch.setattr(sweep_mod, "run_cell_process", killed_after_two)
    sweep = load_sweep(_spec(tmp_path, workers=1))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, progress=False)
    assert sum(c.finished for c in sweep.cells) == 2

    launched.clear()
    monkeypatch.setattr(sweep_mod, "run_cell_process", lambda c, e: (launched.append(c), real(c, e))[1])
    assert main(["sweep", str(_spec(tmp_path, workers=1)), "-q"]) == 0
    assert len(launched) == 2  # only the two missing cells ran
    with open(tmp_path / "sw" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["score_seed"]) for r in rows) == [("biprop", "0"), ("biprop", "1"),
                                                                   ("edge-popup", "0"), ("edge-popup", "1")]
    table = (tmp_path / "sw" / "results.md").read_text()
    assert table.startswith("| runs | biprop | edge-popup |\n|---|---|---|\n| all | ")  # method is the only axis
    assert table.count("(n=2)") == 2 and "edge-popup - " not in table  # no base pairs in this grid
    assert (tmp_path / "sw" / "results.png").stat().st_size > 1000
    status = json.loads((tmp_path / "sw" / "status.json").read_text())
    assert (status["done"], status["failed"], status["running"]) == (4, 0, 0)


def test_a_dead_worker_is_rerun(tmp_path, monkeypatch):
    real = sweep_mod.run_cell_process
    deaths = []

    def dies_once(command, env):
        if not deaths:
            deaths.append(command)
            return -9, "killed"  # the worker died before finishing its cell
        return real(command, env)

    monkeypatch.setattr(sweep_mod, "run_cell_process", dies_once)
    sweep = load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1]}))
    result = run_sweep(sweep, progress=False)
    assert result["finished"] == 2
    assert sorted(c.attempts for c in sweep.cells) == [1, 2]


def test_a_failing_hook_stops_the_sweep_starting_cells(tmp_path, monkeypatch):
    """An on_task_end that raises (a results writer's bug) ends the sweep at once, not after every cell trained."""
    import time

    launched = []

    def slow_failure(command, env):
        launched.append(command)
        time.sleep(0.5)  # long enough for the hook to run before the next cell ends
        return 1, "not run"

    monkeypatch.setattr(sweep_mod, "run_cell_process", slow_failure)

    def hook():
        raise ValueError("the writer broke")

    with pytest.raises(ValueError, match="the writer broke"):
        run_sweep(load_sweep(_spec(tmp_path, workers=1, retries=1)), progress=False, on_task_end=hook)
    # (each cell tries twice: retries=1) the first cell's end raised while the second ran; the last two never started
    assert len({tuple(c) for c in launched}) == 2


def test_failed_cells_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_mod, "run_cell_process", lambda c, e: (1, "boom"))
    with pytest.raises(sweep_mod.SupermaskError, match="2 of 2 cells failed.*boom"):
        run_sweep(load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1]}, retries=1)), progress=False)


def test_sweep_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    sweep = load_sweep(_spec(tmp_path))
    result = run_sweep(sweep, ray_address="local", progress=False)
    assert result["finished"] == 4 and all(c.attempts == 1 for c in sweep.cells)


def test_together_groups_cells_that_differ_only_in_seeds(tmp_path):
    sweep = load_sweep(_spec(tmp_path, grid={"method": ["edge-popup", "biprop"], "score_seed": [0, 1, 2]}, together=2))
    groups = sweep_mod.tasks(sweep, sweep.cells)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]  # per method: 3 seeds in groups of at most 2
    for group in groups:
        assert len({c.overrides["method"] for c in group}) == 1
    with pytest.raises(ConfigError, match="together"):
        load_sweep(_spec(tmp_path, together=-1))


def test_a_sweep_trains_a_group_in_one_process(tmp_path, monkeypatch):
    spec = _spec(tmp_path, grid={"score_seed": [0, 1, 2]}, together=True)
    real = sweep_mod.run_cell_process
    commands = []

    def record(command, env):
        commands.append(command)
        return real(command, env)

    monkeypatch.setattr(sweep_mod, "run_cell_process", record)
    sweep = load_sweep(spec)
    result = run_sweep(sweep, progress=False)
    assert result["finished"] == 3
    assert len(commands) == 1 and commands[0][3] == "together"  # one process for the three cells
    summaries = [json.loads((c.out_dir / "summary.json").read_text()) for c in sweep.cells]
    assert [s["together"] for s in summaries] == [3, 3, 3] and [s["score_seed"] for s in summaries] == [0, 1, 2]


def test_the_together_command_refuses_a_bad_group_file(tmp_path, capsys):
    bad = tmp_path / "g.json"
    bad.write_text('{"runs": []}')
    assert main(["together", str(bad), "-q"]) == 2
    assert "group_dir" in capsys.readouterr().err
    bad.write_text("{nope")
    assert main(["together", str(bad), "-q"]) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_an_interrupted_group_is_resumed_with_exactly_its_own_cells(tmp_path):
    from supermask.run.checkpoint import save_tensors

    sweep = load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1, 2]}, together=True))
    s0, s1, s2 = sweep.cells
    started = sweep.out_dir / "groups" / "group-abc"
    started.mkdir(parents=True)  # a group of cells 0 and 2 was killed after its first checkpoint
    save_tensors(started / "together.safetensors", {"x": __import__("torch").zeros(1)},
                 {"runs": [str(s0.out_dir), str(s2.out_dir)], "states": []})
    assert sweep_mod.tasks(sweep, sweep.cells) == [[s0, s2], [s1]]


def _finished(cell, acc, method=None, **extra):
    """A cell as if it had run: its summary.json only (aggregation reads nothing else); `extra` adds keys such as
    the steps its schedules fired."""
    from supermask.run.checkpoint import write_json

    o = cell.overrides
    cell.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(cell.out_dir / "summary.json", {
        "method": method or o.get("method", "edge-popup"), "model": "small-conv", "width": 0.25,
        "prune_rate": o.get("prune_rate", 0.5), "weight_seed": o.get("weight_seed", 0),
        "score_seed": o.get("score_seed", 0), "data_seed": o.get("data_seed", 0), "epochs": 1, "test_acc": acc,
        "best_test_acc": acc, "seconds": 1.0, **extra})


def test_grid_keys_that_are_not_seeds_are_never_averaged(tmp_path):
    sweep = load_sweep(_spec(tmp_path, grid={"lr": [0.1, 0.001]}))
    for cell, acc in zip(sweep.cells, (0.953, 0.123)):
        _finished(cell, acc)
    sweep_mod.aggregate(sweep)
    with open(sweep.out_dir / "results.csv") as f:
        assert [(r["lr"], r["test_acc"]) for r in csv.DictReader(f)] == [("0.1", "0.953"), ("0.001", "0.123")]
    table = (sweep.out_dir / "results.md").read_text()
    assert "| 0.001 | 12.30 (1 seed) |" in table and "| 0.1 | 95.30 (1 seed) |" in table
    assert "±" not in table.split("\n\n")[0]  # one seed per cell: no interval anywhere in the table
    assert (sweep.out_dir / "results.png").stat().st_size > 1000


def test_seeds_give_intervals_and_paired_differences(tmp_path):
    sweep = load_sweep(_spec(tmp_path, grid={"method": ["edge-popup", "edge-popup+iwr"], "prune_rate": [0.5, 0.9],
                                             "score_seed": [0, 1, 2]}))
    accs = {("edge-popup", 0.5): [60, 61, 62], ("edge-popup+iwr", 0.5): [62, 64, 66],    # differences 2, 3, 4
            ("edge-popup", 0.9): [40, 45, 50], ("edge-popup+iwr", 0.9): [41, 44, 52]}    # differences 1, -1, 2
    for cell in sweep.cells:
        o = cell.overrides
        _finished(cell, accs[o["method"], o["prune_rate"]][o["score_seed"]] / 100)
    result = sweep_mod.aggregate(sweep)
    table = (sweep.out_dir / "results.md").read_text()
    # 61 ± t(0.975, 2) * 1 / sqrt(3) = 61 ± 2.48; 64 ± 4.30 * 2 / sqrt(3) = 64 ± 4.97
    assert "| 0.5 | 61.00 ± 2.48 (n=3) | 64.00 ± 4.97 (n=3) |" in table
    assert "| 0.5 | edge-popup+iwr - edge-popup | +3.00 ± 2.48 (n=3) | ahead |" in table
    # differences 1, -1, 2: mean 2/3, s = sqrt(7/3), half-width 4.30265 * s / sqrt(3) = 3.795
    assert "| 0.9 | edge-popup+iwr - edge-popup | +0.67 ± 3.79 (n=3) | within noise |" in table
    (d50, d90) = result["differences"]
    assert (d50["prune_rate"], d50["verdict"], d50["n"]) == (0.5, "ahead", 3)
    assert d90["ci_low"] == pytest.approx(2 / 3 - 3.7945, abs=1e-3)
    assert (sweep.out_dir / "results.png").stat().st_size > 1000


def _run_fake(sweep):
    """Stand-in for a worker process: the cell's directory as a finished `train` leaves it (config and summary)."""
    from supermask.run.checkpoint import atomic_write_text
    from supermask.run.config import dump_yaml

    by_dir = {f"out_dir={c.out_dir}": c for c in sweep.cells}
    launched = []

    def run(command, env):
        cell = next(by_dir[a] for a in command if a in by_dir)
        launched.append(cell.name)
        cfg = sweep_mod.cell_config(sweep, cell)
        cfg.augment = False
        _finished(cell, 0.5)
        atomic_write_text(cell.out_dir / "config.yaml", dump_yaml(cfg))
        return 0, ""

    return run, launched


def test_a_changed_config_is_never_reused_silently(tmp_path, monkeypatch, capsys):
    sweep = load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1]}))
    fake, launched = _run_fake(sweep)
    monkeypatch.setattr(sweep_mod, "run_cell_process", fake)
    assert run_sweep(sweep, progress=False)["finished"] == 2 and len(launched) == 2
    launched.clear()
    assert run_sweep(load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1]})), progress=False)["finished"] == 2
    assert launched == []  # same config: reused

    changed = _spec(tmp_path, grid={"score_seed": [0, 1]}, set={"model": "small-conv", "width": 0.25, "epochs": 2})
    assert main(["sweep", str(changed), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs=1 there, epochs=2 now" in err and "(and 1 more runs)" in err and "--retrain" in err
    assert len(err.splitlines()) == 1 and launched == []

    sweep = load_sweep(changed)
    fake, launched = _run_fake(sweep)
    monkeypatch.setattr(sweep_mod, "run_cell_process", fake)
    assert run_sweep(sweep, progress=False, retrain=True)["finished"] == 2
    assert sorted(launched) == ["score_seed=0", "score_seed=1"]
    from supermask.run.config import make_config
    assert all(make_config(str(c.out_dir / "config.yaml")).epochs == 2 for c in sweep.cells)


def test_cells_that_cannot_train_together_run_alone(tmp_path, monkeypatch):
    sweep = load_sweep(_spec(tmp_path, grid={"method": ["edge-popup", "gem-miner", "dense"], "score_seed": [0, 1]},
                             together=True))
    groups = sweep_mod.tasks(sweep, sweep.cells)
    grouped = [g for g in groups if len(g) > 1]
    assert [[c.name for c in g] for g in grouped] == [["method=edge-popup-score_seed=0",
                                                      "method=edge-popup-score_seed=1"]]
    # gem-miner's thresholded masks cannot be stacked: each cell alone; dense uses no score seed, so it runs once
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2]
    commands = {g[0].overrides["method"] + str(len(g)): sweep_mod._command(sweep, g)[3] for g in groups}
    assert commands == {"edge-popup2": "together", "gem-miner1": "train", "dense1": "train"}


def _one_fails(sweep, monkeypatch):
    """Workers that finish every cell at test accuracy 0.5 but fail score_seed=1."""
    fake, _ = _run_fake(sweep)
    monkeypatch.setattr(sweep_mod, "run_cell_process",
                        lambda c, e: (1, "boom") if "score_seed=1" in c else fake(c, e))


def test_progress_is_a_plain_line_per_cell_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    sweep = load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1, 2]}, workers=1, retries=0))
    _one_fails(sweep, monkeypatch)
    with pytest.raises(sweep_mod.SupermaskError, match="1 of 3 cells failed"):
        run_sweep(sweep)  # progress on; capsys's stderr is no terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "cell/s" not in err
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert re.fullmatch(r"\[1/3\] score_seed=0: done, test acc 0\.5000; 1 done, 0 failed, ETA \d\d:\d\d", lines[0])
    assert re.fullmatch(r"\[2/3\] score_seed=1: failed \(boom\); 1 done, 1 failed, ETA \d\d:\d\d", lines[1])
    assert lines[2] == "[3/3] score_seed=2: done, test acc 0.5000; 2 done, 1 failed, ETA 00:00"
    status = json.loads((sweep.out_dir / "status.json").read_text())
    assert (status["done"], status["failed"], status["eta_s"]) == (2, 1, 0.0)


def test_sweep_progress_is_a_bar_on_a_terminal_and_nothing_when_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    sweep = load_sweep(_spec(tmp_path, grid={"score_seed": [0, 1]}, workers=1, retries=0))
    _one_fails(sweep, monkeypatch)
    with pytest.raises(sweep_mod.SupermaskError):
        run_sweep(sweep)
    err = capsys.readouterr().err
    assert "\r" in err and "cell" in err and "score_seed=0:" not in err  # the bar, no plain line
    (tmp_path / "q").mkdir()
    sweep = load_sweep(_spec(tmp_path / "q", grid={"score_seed": [0, 1]}, workers=1, retries=0))
    _one_fails(sweep, monkeypatch)
    with pytest.raises(sweep_mod.SupermaskError):
        run_sweep(sweep, progress=False)
    assert capsys.readouterr().err == ""


def test_a_seed_a_method_does_not_use_is_no_replicate(tmp_path):
    # dense draws no scores: three score seeds would train the same network three times and show ± 0.00 (n=3)
    sweep = load_sweep(_spec(tmp_path, grid={"method": ["edge-popup", "dense"], "score_seed": [0, 1, 2]}))
    assert [c.name for c in sweep.cells] == ["method=edge-popup-score_seed=0", "method=edge-popup-score_seed=1",
                                             "method=edge-popup-score_seed=2", "method=dense-score_seed=0"]
    assert sweep.run_once == {"dense": ["score_seed"]}
    for cell, acc in zip(sweep.cells, (0.60, 0.61, 0.62, 0.9805)):
        _finished(cell, acc)
    sweep_mod.aggregate(sweep)
    table = (sweep.out_dir / "results.md").read_text()
    assert "| all | 98.05 (1 seed) | 61.00 ± 2.48 (n=3) |" in table
    assert "dense does not use score_seed: it ran once for the grid's values of it" in table
    # a seed dense does use stays a replicate
    (tmp_path / "w").mkdir()
    sweep = load_sweep(_spec(tmp_path / "w", grid={"method": ["edge-popup", "dense"], "weight_seed": [0, 1, 2]}))
    assert len(sweep.cells) == 6 and sweep.run_once == {}


def test_a_schedule_that_fired_no_step_gets_no_verdict(tmp_path, monkeypatch, capsys):
    # 1 epoch of digits is far fewer steps than IteRand's preset period of 300: its cells are edge-popup renamed
    sweep = load_sweep(_spec(tmp_path, grid={"method": ["edge-popup", "iterand"], "score_seed": [0, 1, 2]}))
    fired = {"edge-popup": 0, "iterand": 0}

    def run(command, env):
        cell = next(c for c in sweep.cells if f"out_dir={c.out_dir}" in command)
        o = cell.overrides
        _finished(cell, 0.9 + o["score_seed"] / 100, iwr_steps=0, iterand_steps=fired[o["method"]])
        return 0, ""

    monkeypatch.setattr(sweep_mod, "run_cell_process", run)
    result = run_sweep(sweep, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and err[0] == ("supermask: warning: method=iterand-score_seed=0: iterand_every_steps=300 "
                                        "fired no step in 1 epochs (iterand_steps 0): results.md marks it 'no step "
                                        "fired' and gives its comparison no verdict")
    with open(sweep.out_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["iwr_steps"], r["iterand_steps"]) for r in rows][2:4] == [("edge-popup", "0", "0"),
                                                                                       ("iterand", "0", "0")]
    table = (sweep.out_dir / "results.md").read_text()
    assert "| all | 91.00 ± 2.48 (n=3) | 91.00 ± 2.48 (n=3), no step fired |" in table
    assert "| all | iterand - edge-popup | +0.00 ± 0.00 (n=3) | no step fired |" in table
    assert "| within noise |" not in table and result["differences"][0]["verdict"] == "no step fired"

    # once it fires, the comparison is judged again (no warning, no mark)
    fired["iterand"] = 3
    for cell in sweep.cells:
        (cell.out_dir / "summary.json").unlink()
    run_sweep(sweep, progress=False)
    assert capsys.readouterr().err == ""
    table = (sweep.out_dir / "results.md").read_text()
    assert "no step fired" not in table and "| iterand - edge-popup | +0.00 ± 0.00 (n=3) | within noise |" in table


def test_grid_values_are_read_as_their_config_types(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    head = f"base: digits\nset: {{width: 0.25, epochs: 1, weight_decay: 5e-4}}\nout_dir: {tmp_path / 'sw'}\n"
    path.write_text(head + "grid: {lr: [1e-1, 2e-2, 5e-3]}\n")  # YAML 1.1 reads all three as text
    sweep = load_sweep(path)
    assert [c.overrides["lr"] for c in sweep.cells] == [0.1, 0.02, 0.005]
    assert sweep.cells[0].overrides["weight_decay"] == 0.0005
    assert [c.name for c in sweep.cells] == ["lr=0.1", "lr=0.02", "lr=0.005"]
    for cell, acc in zip(sweep.cells, (0.3, 0.2, 0.1)):
        _finished(cell, acc)
    sweep_mod.aggregate(sweep)
    table = (sweep.out_dir / "results.md").read_text()
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == ["| 0.005", "| 0.02", "| 0.1"]  # by value
    with open(sweep.out_dir / "results.csv") as f:
        assert [r["lr"] for r in csv.DictReader(f)] == ["0.1", "0.02", "0.005"]

    path.write_text(head + "grid: {lr: [0.1, 1e-1]}\n")  # one config twice
    assert main(["sweep", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"supermask: error: {path}: grid lr lists 0.1 and 1e-1, both 0.1: give each value once"
    path.write_text(head + "grid: {epochs: [null, 250]}\n")  # null is the papers' 250 epochs for a mask search
    with pytest.raises(ConfigError, match=r"^cells epochs=None and epochs=250 resolve to the same config"):
        load_sweep(path)


def test_a_second_sweep_on_the_same_out_dir_is_refused(tmp_path, monkeypatch, capsys):
    from supermask.run.lock import run_lock

    launched = []
    monkeypatch.setattr(sweep_mod, "run_cell_process", lambda c, e: (launched.append(c), (1, "boom"))[1])
    spec = _spec(tmp_path, grid={"score_seed": [0, 1]})
    with run_lock(tmp_path / "sw"):  # the first sweep, still running
        assert main(["sweep", str(spec), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'sw'} is in use by another process (pid " in err
    assert launched == [] and not (tmp_path / "sw" / "status.json").exists()  # nothing of the first one touched


def test_error_bars_stay_within_the_possible_range(tmp_path, monkeypatch):
    from supermask import plots
    from supermask.multi.stats import estimate

    assert plots.clipped_bar(90.0, 40.0, 0.0, 100.0) == (40.0, 10.0)  # 50..130 drawn as 50..100
    assert plots.clipped_bar(20.0, 50.0, 0.0, 100.0) == (20.0, 50.0)  # -30..70 drawn as 0..70
    assert plots.clipped_bar(50.0, 10.0, 0.0, 100.0) == (10.0, 10.0)  # inside: unchanged
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig) or path)
    # n = 2: 65 ± 12.71 * 25 reaches -253% and 383%; the difference -60, 80 reaches -879 and 899 points
    cells = [{"method": "edge-popup", **estimate([40.0, 90.0]).to_dict()},
             {"method": "iterand", **estimate([100.0, 30.0]).to_dict()}]
    diffs = [{"method": "iterand", "base": "edge-popup", **estimate([60.0, -60.0]).to_dict()}]
    plots.seed_plot(cells, diffs, [], tmp_path / "results.png")
    (accuracy, difference) = figures[0].axes[:2]
    for ax, (low, high) in ((accuracy, (0, 100)), (difference, (-100, 100))):
        ys = [y for c in ax.collections for seg in c.get_segments() for _, y in seg]
        assert ys and min(ys) == low and max(ys) == high
        assert "n=2" in [t.get_text() for t in ax.texts]
