"""The paper-table benchmark's pure parts: schedule scaling for short runs, and the markdown table."""

import importlib.util
import json
from pathlib import Path

import pytest

from supermask.run.config import make_config
from supermask.errors import ConfigError


def _benchmark(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paper_table = _benchmark("paper_table")
export_sizes = _benchmark("export_sizes")


def absolute_paths(obj) -> list[str]:
    """Every string in a JSON-like object that is an absolute path (of the machine that wrote it)."""
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in absolute_paths(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in absolute_paths(v)]
    return [obj] if isinstance(obj, str) and (obj.startswith(("/", "~")) or obj[1:3] == ":\\") else []


@pytest.mark.parametrize("method, model, epochs, every", [
    ("edge-popup+iwr", "conv4", 10, 1),    # F 3 of 250 -> 0.012 of 10 epochs -> 1
    ("biprop+iwr", "conv4", 10, 1),        # F 10 of 250 -> 0.4 -> 1
    ("biprop+iwr", "conv4", 100, 4),       # F 10 of 250 -> 4 of 100
    ("edge-popup+iwr", "conv6", 125, 5),   # F 10 of 250 -> 5 of 125
    ("edge-popup+iwr", "conv4", 250, 3),   # the paper's own length: its F
])
def test_short_runs_scale_the_iwr_period(method, model, epochs, every):
    cfg = make_config(model, paper_table.cell_overrides(model, 0.25, 0.9, method, 0, epochs, None))
    assert cfg.iwr_every == every and cfg.label == method


def _row(method, p, seed, acc):
    return {"model": "conv4", "width": 0.25, "prune_rate": p, "epochs": 10, "method": method, "test_acc": acc,
            "weight_seed": seed, "score_seed": seed, "data_seed": seed, "seed": seed}


def test_markdown_table_beside_published():
    rows = [_row("edge-popup", 0.5, 0, 0.60), _row("edge-popup", 0.5, 1, 0.62),
            _row("edge-popup+iwr", 0.5, 0, 0.63), _row("edge-popup+iwr", 0.5, 1, 0.64), _row("biprop", 0.9, 0, 0.5)]
    cells = paper_table.seed_estimates(rows, paper_table.AXES)
    differences = paper_table.paired_differences(rows, paper_table.AXES)
    lines = paper_table.markdown(cells, differences, ["edge-popup", "biprop", "edge-popup+iwr"]).splitlines()
    # 61 ± t(0.975, 1) * sqrt(2) / sqrt(2) = 61 ± 12.71; one seed: no interval
    assert lines[2] == "| conv4, 0.25, 50, 10 | 61.00 ± 12.71 (n=2) (73.34) | - (73.23) | 63.50 ± 6.35 (n=2) (78.92) |"
    assert lines[3] == "| conv4, 0.25, 90, 10 | - | 50.00 (1 seed) | - |"
    # differences 3 and 2: mean 2.5, s / sqrt(2) = 0.5, half-width 12.706 * 0.5
    assert "| conv4, 0.25, 50, 10 | edge-popup+iwr - edge-popup | +2.50 ± 6.35 (n=2) | within noise |" in lines


SHA = "ab" * 32


def test_result_rows_carry_no_absolute_path(tmp_path):
    summary = {"method": "edge-popup", "model": "conv4", "width": 0.25, "prune_rate": 0.5, "epochs": 10,
               "weight_seed": 0, "score_seed": 0, "data_seed": 0, "test_acc": 0.5, "best_test_acc": 0.5, "seconds": 1.0,
               "params_total": 10, "params_kept": 5, "dataset_source": "/work/shared/datasets/cifar10-jpeg75.tar.gz",
               "dataset_sha256": SHA, "out_dir": "/somewhere/else/runs/paper_table/conv4-s0"}
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.25}\n{"epoch": 1, "test_acc": 0.5}\n')
    row = paper_table.row_of(summary, tmp_path)
    assert row["curve"] == [0.25, 0.5]  # the accuracy after each epoch outlives the run directory
    assert absolute_paths(row) == []
    assert row["dataset_source"] == "cifar10-jpeg75.tar.gz" and row["dataset_sha256"] == SHA
    assert row["out_dir"] == "conv4-s0"  # outside the repository and the current directory: the folder's name
    inside = paper_table.row_of({**summary, "out_dir": str(Path.cwd() / "runs" / "x")}, tmp_path)
    assert inside["out_dir"] == "runs/x"  # a run under the current directory: relative to it
    assert paper_table.row_of({**summary, "out_dir": "runs/x"}, tmp_path)["out_dir"] == "runs/x"
    report = {"file": "/tmp/tmpx74oc7zb/net.smask", "bytes": 100}
    row = export_sizes.row_of("/home/me/runs/a", {"method": "biprop", "model": "conv4", "width": 0.25,
                                                  "prune_rate": 0.9}, report, True)
    assert absolute_paths(row) == [] and row["file"] == "net.smask" and row["run"] == "a" and row["bytes"] == 100


def test_a_tiny_digits_grid_with_seeds(tmp_path):
    paper_table.main(["--base", "digits", "--models", "small-conv", "--widths", "0.25", "--prune-rates", "0.5",
                      "--methods", "edge-popup,edge-popup+iwr", "--seeds", "0,1", "--epochs", "1", "--together", "2",
                      "--runs", str(tmp_path / "runs"), "--results", str(tmp_path), "--name", "t"])
    out = json.loads((tmp_path / "t.json").read_text())
    assert absolute_paths(out) == []  # the runs lie under an absolute tmp_path
    assert {r["out_dir"] for r in out["rows"]} == {f"small-conv-w0.25-{m}-p0.5-e1-s{s}"
                                                   for m in ("edge-popup", "edge-popup+iwr") for s in (0, 1)}
    sha = json.loads((tmp_path / "runs" / out["rows"][0]["out_dir"] / "summary.json").read_text())["dataset_sha256"]
    assert {(r["dataset_source"], r["dataset_sha256"]) for r in out["rows"]} == {("sklearn:load_digits", sha)}
    assert sorted((r["method"], r["weight_seed"], r["score_seed"], r["data_seed"]) for r in out["rows"]) == [
        ("edge-popup", 0, 0, 0), ("edge-popup", 1, 1, 1), ("edge-popup+iwr", 0, 0, 0), ("edge-popup+iwr", 1, 1, 1)]
    assert [(c["method"], c["n"]) for c in out["cells"]] == [("edge-popup", 2), ("edge-popup+iwr", 2)]
    (d,) = out["differences"]
    acc = {(r["method"], r["seed"]): 100 * r["test_acc"] for r in out["rows"]}
    diffs = [acc["edge-popup+iwr", s] - acc["edge-popup", s] for s in (0, 1)]
    assert d["mean"] == pytest.approx(sum(diffs) / 2) and d["verdict"] in ("ahead", "behind", "within noise")
    assert d["ci_half_width"] == pytest.approx(12.7062 * abs(diffs[0] - diffs[1]) / 2, abs=1e-3)
    assert "(n=2)" in (tmp_path / "t.md").read_text() and (tmp_path / "t.png").stat().st_size > 1000


@pytest.mark.parametrize("method, epochs, every, rate", [
    ("edge-popup+iwr", 10, 1, 0.1),    # the paper's default EP+IWR recipe, F 3 of 250 -> 1 of 10, r 0.1
    ("biprop+iwr", 10, 1, 0.2),        # Biprop+IWR's one recipe, F 10 of 250 -> 1 of 10, r 0.2
    ("edge-popup+iwr", 250, 3, 0.1),
])
def test_vit_cells_take_the_papers_default_iwr_recipe(method, epochs, every, rate):
    cfg = make_config("vit", paper_table.cell_overrides("vit", 0.25, 0.5, method, 0, epochs, None))
    assert (cfg.iwr_every, cfg.iwr_rate, cfg.label, cfg.optimizer) == (every, rate, method, "adam")


def test_the_vit_profile_is_the_issues_table():
    prof = paper_table.PROFILES["vit"]
    assert (prof["models"], prof["widths"], prof["prune_rates"], prof["epochs"]) == (["vit"], [0.25], [0.5, 0.9], 10)
    assert prof["methods"] == ["edge-popup", "biprop", "edge-popup+iwr", "biprop+iwr", "dense"]


def test_markdown_says_when_the_papers_have_no_figures():
    rows = [{**_row("edge-popup", 0.5, 0, 0.5), "model": "vit"}, {**_row("dense", 0.5, 0, 0.6), "model": "vit"}]
    md = paper_table.markdown(paper_table.seed_estimates(rows, paper_table.AXES), [], ["edge-popup", "dense"])
    assert "| vit, 0.25, 50, 10 | 50.00 (1 seed) | 60.00 (1 seed) |" in md
    assert "The papers publish no figures for vit." in md and "in parentheses" not in md


@pytest.mark.parametrize("method", ["edge-popup+iwr", "biprop+iwr", "dense"])
def test_a_recorded_config_stands_for_its_cell_and_no_other(method):
    cfg = make_config("vit", {**paper_table.cell_overrides("vit", 0.25, 0.5, method, 0, 10, "/data"), "out_dir": "r"})
    row = {"config": json.loads(json.dumps(paper_table.row_config(cfg)))}  # as read back from the JSON
    assert "out_dir" not in row["config"] and "data_dir" not in row["config"]  # where files are is no part of it
    assert paper_table.difference(row, cfg) is None
    assert paper_table.difference(row, make_config("vit", {**cfg.to_dict(), "out_dir": "elsewhere"})) is None
    changed = make_config("vit", {**cfg.to_dict(), "lr": 0.01})
    assert paper_table.difference(row, changed) == "lr=0.001 there, lr=0.01 now"
    row["config"]["no_such_key"] = 1
    assert "cannot read" in paper_table.difference(row, cfg)


def _tiny_table(tmp_path, *extra):
    # two dense cells (seeds 0 and 1), each run once and shown at both prune rates: seconds each
    return ["--base", "digits", "--models", "conv2", "--widths", "0.0625", "--prune-rates", "0.5,0.9",
            "--methods", "dense", "--seeds", "0,1", "--epochs", "1", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--name", "t", *extra]


def test_finished_cells_are_kept_in_the_results_across_sessions(tmp_path, monkeypatch):
    import shutil

    results = tmp_path / "results" / "t.json"
    saved = []  # rows in each write of the results
    write = paper_table.write_json
    monkeypatch.setattr(paper_table, "write_json", lambda path, obj: (saved.append(len(obj["rows"])), write(path, obj)))
    paper_table.main(_tiny_table(tmp_path))
    # dense once per seed, not per prune rate: two cells; the results saved after each (the first save may come
    # when the second cell has finished too: it runs in a worker thread) and at the end
    assert len(saved) == 3 and saved[0] >= 1 and saved[1:] == [2, 2]
    first = json.loads(results.read_text())
    assert sorted((r["method"], r["prune_rate"], r["seed"]) for r in first["rows"]) == [("dense", 0.5, 0),
                                                                                       ("dense", 0.5, 1)]
    assert all(r["config"]["model"] == "conv2" and "out_dir" not in r["config"] for r in first["rows"])
    assert [(c["prune_rate"], c["n"]) for c in first["cells"]] == [(0.5, 2), (0.9, 2)]  # shown at both rates
    assert first["cells"][0]["mean"] == first["cells"][1]["mean"]
    md = (tmp_path / "results" / "t.md").read_text()
    other = _tiny_table(tmp_path) + ["--base", str(tmp_path / "lr.yaml")]
    (tmp_path / "lr.yaml").write_text("lr: 0.05\n")
    with pytest.raises(ConfigError, match="lr=0.05 now"):  # the run directories hold runs of another config
        paper_table.main(other)
    assert json.loads(results.read_text())["rows"] == first["rows"]  # not recorded as runs of the new config

    shutil.rmtree(tmp_path / "runs")  # a new session: the run directories are gone, the results file is kept

    def refuse(command, env):
        raise AssertionError(f"retrained a recorded cell: {command}")

    from supermask import sweep as sweep_lib

    monkeypatch.setattr(sweep_lib, "run_cell_process", refuse)
    paper_table.main(_tiny_table(tmp_path))
    again = json.loads(results.read_text())
    assert again["rows"] == first["rows"] and again["cells"] == first["cells"]
    assert (tmp_path / "results" / "t.md").read_text() == md
    assert not (tmp_path / "runs").exists()

    # the same cells under another config are not taken for the recorded ones: refused, naming the key
    with pytest.raises(ConfigError, match="lr=0.05 now"):
        paper_table.main(other)
    assert json.loads(results.read_text())["rows"] == first["rows"]


def test_a_biprop_row_recorded_before_biprop_grad_is_not_todays_biprop():
    cfg = make_config("conv4", {**paper_table.cell_overrides("conv4", 0.25, 0.5, "biprop", 0, 10, None), "out_dir": "r"})
    old = paper_table.row_config(cfg)
    del old["biprop_grad"]  # a row written before the published gradient became the default
    assert paper_table.difference({"config": old}, cfg) == "biprop_grad='alpha' there, biprop_grad='weight' now"
    assert paper_table.difference({"config": {**old, "biprop_grad": "weight"}}, cfg) is None


def test_the_shared_source_table_pairs_each_n_with_full_by_seed():
    shared_source = _benchmark("shared_source")
    rows = [{"method": "edge-popup", "weight_source": src, "seed": seed, "test_acc": acc}
            for src, accs in (("shared:10", (0.50, 0.52)), ("full", (0.60, 0.61)), ("shared:1000", (0.59, 0.62)))
            for seed, acc in zip((0, 1), accs)]
    assert shared_source.source_order(rows) == ["full", "shared:1000", "shared:10"]
    table = shared_source.markdown(rows, total=2000)
    assert "| shared:1000 | 0.5 | 60.50 ±" in table
    # paired by seed: (50 - 60, 52 - 61) = (-10, -9), mean -9.5
    assert "| edge-popup | shared:10 - full | -9.50 ± " in table
    assert "| edge-popup | shared:1000 - full | +0.00 ± " in table  # (59 - 60, 62 - 61)


def test_at_the_papers_budget_dense_shares_the_row_of_the_mask_searches():
    # width01: the mask searches train 250 epochs and dense 100, as in the papers' tables; one row shows both
    rows = [{**_row("edge-popup", 0.5, 0, 0.52), "width": 0.1, "epochs": 250},
            {**_row("dense", 0.5, 0, 0.63), "width": 0.1, "epochs": 100}]
    cells = paper_table.seed_estimates(rows, paper_table.AXES)
    md = paper_table.markdown(cells, [], ["edge-popup", "dense"], papers_budget=True)
    assert "| conv4, 0.1, 50, 250 | 52.00 (1 seed) (50.73) | 63.00 (1 seed) (67.26) |" in md
    assert "dense 100 epochs (shown in the same row)" in md and "| conv4, 0.1, 50, 100 |" not in md
    # a fixed budget for all (the cpu profile) keeps each epoch count in its own row
    assert "| conv4, 0.1, 50, 100 |" in paper_table.markdown(cells, [], ["edge-popup", "dense"])


def test_the_methods_profile_is_issue_24s_table():
    prof = paper_table.PROFILES["methods"]
    assert (prof["models"], prof["widths"], prof["prune_rates"], prof["seeds"], prof["epochs"]) == \
        (["conv4"], [0.25], [0.9, 0.98], [0, 1, 2], 10)
    cfgs = {m: make_config("conv4", paper_table.cell_overrides("conv4", 0.25, 0.9, m, 1, 10, None))
            for m in prof["methods"]}
    assert (cfgs["edge-popup-global"].method, cfgs["edge-popup-global"].prune_scope) == ("edge-popup", "global")
    assert (cfgs["gem-miner"].gem_period, cfgs["gem-miner"].prune_rate) == (2, 0.9)  # a round every 2 of 10 epochs
    signed = cfgs["signed-supermask"]
    assert (signed.weight_decay_mode, signed.weight_decay, signed.weight_init) == ("decoupled", 5e-4, "signed-constant")
    assert paper_table.ONCE == ("dense", "signed-supermask")  # neither takes the prune rate: one run per seed
    assert cfgs["multicoat"].multicoat_prune_rates == pytest.approx([0.9, 0.95, 0.975])  # each coat half the last
    assert (cfgs["multicoat"].multicoat_scale, cfgs["multicoat-mean"].multicoat_scale) == ("published", "mean")
    assert all(c.weight_seed == c.score_seed == c.data_seed == 1 for c in cfgs.values())
    o = paper_table.cell_overrides("conv4", 0.25, 0.9, "edge-popup-global", 0, 10, None)
    assert paper_table.cell_name(o, "edge-popup-global") == "conv4-w0.25-edge-popup-global-p0.9-e10-s0"


def test_the_methods_table_runs_and_reports_storage(tmp_path):
    argv = ["--profile", "methods", "--models", "small-conv", "--seeds", "0", "--epochs", "1",
            "--methods", "edge-popup,signed-supermask", "--prune-rates", "0.9,0.98", "--workers", "2", "--base", "digits", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path), "--name", "m", "--threads", "1"]
    paper_table.main(argv)
    result = json.loads((tmp_path / "m.json").read_text())
    at90 = {c["method"]: c for c in result["cells"] if c["prune_rate"] == 0.9}
    assert set(at90) == {"edge-popup", "signed-supermask"}
    # Edge-Popup's .smask: about the entropy of a 10% mask (0.47 bits) plus the file's head and other tensors
    assert 0.4 < at90["edge-popup"]["smask_bits_per_weight"] < 1.5
    assert at90["edge-popup"]["kept_percent"] == pytest.approx(10.0, abs=0.01)
    # the signed supermask ran once, at the first rate, and stands in both rows with the density it reached
    assert sum(r["method"] == "signed-supermask" for r in result["rows"]) == 1
    at98 = {c["method"]: c for c in result["cells"] if c["prune_rate"] == 0.98}
    assert at98["signed-supermask"]["mean"] == at90["signed-supermask"]["mean"]
    assert {(d["method"], d["prune_rate"]) for d in result["differences"]} == \
        {("signed-supermask", p) for p in (0.9, 0.98)}
    md = (tmp_path / "m.md").read_text()
    assert "bits/weight" in md and "% kept" in md and "each row shows the same runs" in md


def test_biprop_iwr_unscaled_is_biprop_iwr_as_the_iwr_configs_run_it():
    def cfg(method, epochs):
        return make_config("conv4", paper_table.cell_overrides("conv4", 0.1, 0.5, method, 0, epochs, None))

    unscaled, scaled = cfg("biprop+iwr-unscaled", 250), cfg("biprop+iwr", 250)
    # the IWR configs leave scale_fan unset: plain Kaiming normal, and nothing else differs from Biprop+IWR
    assert (unscaled.label, unscaled.scale_fan, scaled.scale_fan) == ("biprop+iwr", False, True)
    assert {k for k, v in unscaled.to_dict().items() if scaled.to_dict()[k] != v} == {"scale_fan"}
    assert (unscaled.iwr_every, unscaled.iwr_rate) == (10, 0.2)
    assert cfg("biprop+iwr-unscaled", 100).iwr_every == 4  # a short run scales F as Biprop+IWR's: 10 of 250 -> 4 of 100

    # it stands beside the published Biprop+IWR figure, and is paired with Biprop, as the paper compares them, and
    # with Biprop+IWR, the init's own effect
    rows = [{**_row(m, 0.5, seed, acc), "width": 0.1, "epochs": 250}
            for m, seed, acc in (("biprop", 0, 0.47), ("biprop", 1, 0.49), ("biprop+iwr", 0, 0.53),
                                 ("biprop+iwr", 1, 0.52), ("biprop+iwr-unscaled", 0, 0.55),
                                 ("biprop+iwr-unscaled", 1, 0.58))]
    cells = paper_table.seed_estimates(rows, paper_table.AXES)
    differences = paper_table.table_differences(rows, "width01")
    md = paper_table.markdown(cells, differences, ["biprop", "biprop+iwr-unscaled"])
    # 48 ± 12.706 * 1 and 56.5 ± 12.706 * 1.5; differences 8 and 9: +8.5 ± 12.706 * 0.5
    assert "| conv4, 0.1, 50, 250 | 48.00 ± 12.71 (n=2) (50.40) | 56.50 ± 19.06 (n=2) (59.64) |" in md
    assert "| conv4, 0.1, 50, 250 | biprop+iwr-unscaled - biprop | +8.50 ± 6.35 (n=2) | ahead |" in md
    # differences 2 and 6: +4 ± 12.706 * 2
    assert "| conv4, 0.1, 50, 250 | biprop+iwr-unscaled - biprop+iwr | +4.00 ± 25.41 (n=2) | within noise |" in md
    # the methods profile pairs each variant with Edge-Popup alone
    with_ep = rows + [{**_row("edge-popup", 0.5, seed, 0.5), "width": 0.1, "epochs": 250} for seed in (0, 1)]
    assert [(d["method"], d["base"]) for d in paper_table.table_differences(with_ep, "methods")] == [
        ("biprop+iwr-unscaled", "edge-popup")]
    assert "biprop+iwr-unscaled is biprop+iwr as the published code's configs run it" in md
