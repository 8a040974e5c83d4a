"""Mask comparison on hand-computed masks, chance levels, refusal of mismatched runs, plots, studies."""

import csv
import math
import json

import numpy as np
import pytest
import torch

import supermask.run.train
from supermask import ConfigError
from supermask.run.checkpoint import save_tensors, write_json
from supermask.cli import main
from supermask.analysis.landscape import (TOTAL, PackedMask, chance_jaccard, chance_matching, classical_mds, pack, pair_counts,
                                 popcount, write_comparison)
from supermask.multi.study import run_study

A1 = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
B1 = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
A2 = torch.tensor([[1, 0], [0, 0], [0, 1]], dtype=torch.bool)  # 2 of 6 kept
B2 = torch.tensor([[0, 1], [0, 0], [1, 0]], dtype=torch.bool)


def test_hand_computed_pair():
    c = pair_counts(pack({"l1": A1, "l2": A2}), pack({"l1": B1, "l2": B2}))
    # l1: both = {0, 4} = 2, union = {0, 1, 2, 4} = 4, xor = 2 of 6
    assert (c["l1"].both, c["l1"].union) == (2, 4)
    assert c["l1"].jaccard == 0.5 and c["l1"].matching == pytest.approx(4 / 6)
    # l2: disjoint: both 0, union 4, xor 4 of 6
    assert c["l2"].jaccard == 0.0 and c["l2"].matching == pytest.approx(2 / 6)
    # total: both 2, union 8 (the public code's defect would give 2 / (5 + 5) = 0.2)
    assert c[TOTAL].jaccard == 0.25 and c[TOTAL].matching == pytest.approx(6 / 12)


def test_chance_levels():
    c = pair_counts(pack({"l1": A1}), pack({"l1": B1}))["l1"]  # k = 1/2 for both
    assert c.chance_jaccard == pytest.approx(chance_jaccard(0.5)) == pytest.approx(1 / 3)
    assert c.chance_matching == pytest.approx(chance_matching(0.5)) == pytest.approx(0.5)
    assert chance_jaccard(0.25) == pytest.approx(0.25 / 1.75) and chance_jaccard(0.5) == pytest.approx(0.333, abs=1e-3)
    assert chance_matching(0.25) == pytest.approx(0.625)
    # random masks land at chance
    g = torch.Generator().manual_seed(0)
    ra, rb = (torch.rand(200_000, generator=g) < 0.25 for _ in range(2))
    c = pair_counts(pack({"x": ra}), pack({"x": rb}))["x"]
    assert abs(c.jaccard - c.chance_jaccard) < 0.005 and abs(c.matching - c.chance_matching) < 0.005


def test_popcount_and_packing_round_trip():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(3, 5, 7, generator=g) < 0.3  # 105 bits: the last byte is padded
    p = PackedMask.from_tensor(m)
    assert p.n == 105 and p.kept == int(m.sum())
    assert popcount(np.array([255, 1, 0, 128], dtype=np.uint8)) == 10


def test_classical_mds_recovers_a_line():
    x = np.array([0.0, 1.0, 3.0, 7.0])
    d = np.abs(x[:, None] - x[None, :])
    pts = classical_mds(d)
    rec = np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)
    assert np.allclose(rec, d, atol=1e-9)


def _fake_run(path, masks, method="edge-popup", acc=0.5, seed=0):
    path.mkdir(parents=True)
    save_tensors(path / "masks.safetensors", masks)
    write_json(path / "summary.json", {"method": method, "test_acc": acc, "score_seed": seed})
    return path


def test_write_comparison_files(tmp_path):
    g = torch.Generator().manual_seed(2)
    runs = []
    for method in ("edge-popup", "biprop"):
        for s in range(3):
            masks = {"conv": torch.rand(4, 3, 3, 3, generator=g) < 0.5, "fc": torch.rand(10, 8, generator=g) < 0.5}
            runs.append(_fake_run(tmp_path / f"{method}-{s}", masks, method, acc=0.5 + 0.01 * s, seed=s))
    summary = write_comparison(runs, tmp_path / "cmp")
    with open(tmp_path / "cmp" / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run_a", "run_b", "layer", "label", "matching", "jaccard", "chance_matching",
                             "chance_jaccard"]
    assert len(rows) == 15 * 3  # 15 pairs x (2 layers + total)
    assert {r["layer"] for r in rows} == {"conv", "fc", TOTAL}
    assert set(summary["by_method_pair"]) == {"edge-popup|edge-popup", "biprop|biprop", "biprop|edge-popup"}
    ep = summary["by_method_pair"]["edge-popup|edge-popup"][TOTAL]
    assert ep["pairs"] == 3 and ep["jaccard_min"] <= ep["jaccard"] <= ep["jaccard_max"]
    for png in ("heatmap.png", "layers.png", "mds.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 1000
    assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["plots"] == ["heatmap.png", "layers.png", "mds.png"]


def test_compare_refuses_mismatched_runs(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", {"conv": A1})
    b = _fake_run(tmp_path / "b", {"conv": A2})
    with pytest.raises(ConfigError, match="different architectures"):
        write_comparison([a, b], tmp_path / "out")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different architectures" in err[0]
    assert main(["compare", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2


def test_runs_sharing_their_last_path_components_get_unique_names_and_the_right_distances(tmp_path, capsys):
    from supermask.analysis.landscape import compare, hamming_matrix, load_run, unique_names

    c1 = ~A1  # the complement of A1: at Hamming distance 1 from it
    paths = [_fake_run(tmp_path / "st_p50" / "runs" / "X", {"conv": A1}),
             _fake_run(tmp_path / "st_p90" / "runs" / "X", {"conv": B1}),
             _fake_run(tmp_path / "other" / "Y", {"conv": c1})]
    names = unique_names(paths)
    assert names == ["st_p50/runs/X", "st_p90/runs/X", "Y"]  # the shortest suffix that tells each apart
    runs = [load_run(p) for p in paths]
    for run, name in zip(runs, names):
        run.name = name
    # hand-counted: A1 and B1 differ in 2 of 6 positions, A1 and ~A1 in all 6, B1 and ~A1 in 4
    expected = np.array([[0, 2 / 6, 1], [2 / 6, 0, 4 / 6], [1, 4 / 6, 0]])
    assert np.allclose(hamming_matrix(runs, compare(runs)), expected)
    summary = write_comparison(paths, tmp_path / "cmp", plots=False)
    assert [r["name"] for r in summary["runs"]] == names
    assert unique_names([tmp_path / "a" / "X", tmp_path / "b" / "X" / "X"]) == ["a/X", "X/X"]


def test_a_run_given_twice_is_refused(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", {"conv": A1})
    b = _fake_run(tmp_path / "b", {"conv": B1})
    for twice in ([a, b, a], [a, b, tmp_path / "b" / ".." / "a"]):
        with pytest.raises(ConfigError, match="given twice"):
            write_comparison(twice, tmp_path / "out")
    assert main(["compare", str(a), str(b), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{b}" in err[0] and "given twice" in err[0]
    assert not (tmp_path / "out").exists()


def test_study_shares_weights_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    overrides = {"model": "small-conv", "width": 0.25, "epochs": 1, "out_dir": str(tmp_path / "st")}
    summary = run_study("digits", overrides, score_seeds=3, progress=False, log=lambda *_: None)
    runs = sorted((tmp_path / "st" / "runs").iterdir())
    assert [r.name for r in runs] == ["edge-popup-w0-s0", "edge-popup-w0-s1", "edge-popup-w0-s2"]
    assert summary["by_method_pair"]["edge-popup|edge-popup"][TOTAL]["pairs"] == 3
    from supermask.run.checkpoint import load_tensors

    weights = [load_tensors(r / "checkpoint.safetensors")[0] for r in runs]
    originals = [k for k in weights[0] if k.endswith("original")]
    for w in weights[1:]:
        assert all(torch.equal(w[k], weights[0][k]) for k in originals)  # same random weights

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(supermask.run.train, "run", no_training)  # the same config as above: every run is reused
    assert main(["study", "digits", "model=small-conv", "width=0.25", "epochs=1", f"out_dir={tmp_path / 'st'}",
                 "--score-seeds", "3", "-q"]) == 0
    assert "Jaccard" in capsys.readouterr().out


def test_study_score_seeds_differ_across_weight_seeds():
    from supermask import convert, build_model
    from supermask.run.config import make_config
    from supermask.multi.study import study_configs

    base = make_config("digits", {"out_dir": "st", "score_seed": 10})
    cfgs = study_configs(base, 3, weight_seeds=2)
    assert [(c.weight_seed, c.score_seed) for c in cfgs] == [(0, 10), (0, 11), (0, 12), (1, 13), (1, 14), (1, 15)]
    assert len({c.out_dir for c in cfgs}) == 6
    # so no pair across weight seeds starts from the same scores
    scores = [convert(build_model("small-conv", width=0.25), "edge-popup", 0.5, weight_seed=c.weight_seed,
                      score_seed=c.score_seed)[0].parametrizations.weight[0].scores for c in (cfgs[0], cfgs[3])]
    assert not torch.equal(*scores)
    assert [c.score_seed for c in study_configs(base, 3)] == [10, 11, 12]  # one weight seed: as before


def test_a_study_of_one_run_is_refused_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a study that cannot compare anything trained a run")

    monkeypatch.setattr(supermask.run.train, "run", no_training)
    out = tmp_path / "st"
    assert main(["study", "digits", "epochs=1", f"out_dir={out}", "--score-seeds", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--score-seeds 1" in err[0] and "at least two runs" in err[0]
    assert not out.exists()
    assert main(["study", "digits", "epochs=1", f"out_dir={out}", "--score-seeds", "1", "--together", "-q"]) == 2


@pytest.fixture(scope="module")
def two_seeds_and_dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    base = ["train", "digits", "model=small-conv", "width=0.25", "epochs=2", "-q"]
    for name, extra in [("a", ["score_seed=0"]), ("b", ["score_seed=1"]), ("dense", ["method=dense", "lr=0.01"]),
                        ("other_weights", ["weight_seed=7"])]:
        assert main(base + extra + [f"out_dir={root / name}"]) == 0
    return root


def test_mask_path_ends_at_the_two_runs(two_seeds_and_dense, tmp_path, capsys):
    from supermask.analysis.paths import mask_path

    root = two_seeds_and_dense
    result = mask_path(root / "a", root / "b", steps=5, device="cpu")
    pts = result["points"]
    acc_a = json.loads((root / "a" / "summary.json").read_text())["test_acc"]
    acc_b = json.loads((root / "b" / "summary.json").read_text())["test_acc"]
    assert pts[0]["hamming_to_a"] == 0 and pts[-1]["hamming_to_b"] == 0
    assert pts[0]["test_acc"] == acc_a and pts[-1]["test_acc"] == acc_b
    distances = [p["hamming_to_a"] for p in pts]
    assert distances == sorted(distances) and distances[-1] > 0.3  # moves steadily away from A
    assert main(["path", str(root / "a"), str(root / "b"), "--steps", "3", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "path.png").stat().st_size > 1000
    assert main(["path", str(root / "a"), str(root / "other_weights"), "--out", str(tmp_path / "q")]) == 2
    assert "different weights" in capsys.readouterr().err


def test_path_norms_and_compare_agree_on_an_unfinished_run(two_seeds_and_dense, tmp_path, capsys):
    import shutil

    root = two_seeds_and_dense
    unfinished = tmp_path / "killed"
    shutil.copytree(root / "a", unfinished)
    for name in ("summary.json", "masks.safetensors"):  # as a run killed after a checkpoint leaves it
        (unfinished / name).unlink()
    for args in (["path", str(unfinished), str(root / "b"), "--out", str(tmp_path / "p")],
                 ["path", str(root / "b"), str(unfinished), "--out", str(tmp_path / "p")],
                 ["norms", str(unfinished), "--out", str(tmp_path / "n")],
                 ["norms", str(root / "a"), "--dense", str(unfinished), "--out", str(tmp_path / "n")],
                 ["compare", str(unfinished), str(root / "b"), "--out", str(tmp_path / "c")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{unfinished} is not a finished run" in err[0], args
    assert not any((tmp_path / d).exists() for d in ("p", "n", "c"))


def test_layer_norms_hand_check(two_seeds_and_dense, tmp_path):
    from supermask.analysis.norms import layer_norms
    from supermask.run.train import load_run_model

    root = two_seeds_and_dense
    result = layer_norms(root / "a", dense_run=root / "dense")
    _, _, model, _ = load_run_model(root / "a", device="cpu")
    from supermask.core.convert import masked_layers, random_weight

    for row, (name, layer, p) in zip(result["layers"], masked_layers(model)):
        w, m = random_weight(layer), p.mask()
        assert row["kept"] == pytest.approx(float((w * m).norm()))
        assert row["kept"] ** 2 + row["pruned"] ** 2 == pytest.approx(float(w.norm()) ** 2, rel=1e-5)
        # magnitude pruning keeps the largest weights: the kept half carries most of the norm
        assert row["magnitude_kept"] > row["magnitude_pruned"]
        assert row["magnitude_kept"] ** 2 + row["magnitude_pruned"] ** 2 == pytest.approx(row["dense"] ** 2, rel=1e-5)
    assert main(["norms", str(root / "a"), "--dense", str(root / "dense"), "--out", str(tmp_path / "n")]) == 0
    assert (tmp_path / "n" / "norms.png").stat().st_size > 1000


def test_masks_on_pretrained_weights(two_seeds_and_dense, tmp_path):
    from supermask.run.checkpoint import load_tensors

    root = two_seeds_and_dense
    out = tmp_path / "pre"
    assert main(["train", "digits", "model=small-conv", "width=0.25", "epochs=1", "-q", f"init_from={root / 'dense'}",
                 f"out_dir={out}"]) == 0
    dense, _ = load_tensors(root / "dense" / "checkpoint.safetensors")
    search, _ = load_tensors(out / "checkpoint.safetensors")
    assert torch.equal(search["model.0.parametrizations.weight.original"], dense["model.0.weight"])
    with pytest.raises(ConfigError, match="init_from"):
        from supermask.run.config import make_config

        make_config("digits", {"init_from": str(tmp_path / "missing")})


def test_layers_keep_the_models_order(tmp_path):
    from supermask.analysis.landscape import layer_order, load_run

    names = ["0", "2", "10", "12"]
    assert layer_order(dict.fromkeys(names), None) == names  # numbers compared as numbers
    recorded = ["stem.0", "layer1.0.conv1", "fc"]
    assert layer_order(dict.fromkeys(sorted(recorded)), {"layers": recorded}) == recorded
    masks = {n: torch.ones(2, dtype=torch.bool) for n in names}
    run = tmp_path / "r"
    run.mkdir()
    save_tensors(run / "masks.safetensors", masks, {"layers": names})
    write_json(run / "summary.json", {"method": "edge-popup"})
    assert list(load_run(run).masks) == names


def test_mask_path_refuses_runs_that_mask_other_weights(two_seeds_and_dense, tmp_path, capsys):
    from supermask.analysis.paths import mask_path

    root = two_seeds_and_dense
    for key, value in [("skip_params", "[first]"), ("include_params", "['*']")]:
        other = tmp_path / key
        assert main(["train", "digits", "model=small-conv", "width=0.25", "epochs=1", "-q", "score_seed=1",
                     f"{key}={value}", f"out_dir={other}"]) == 0
        with pytest.raises(ConfigError, match=f"differ in {key} "):
            mask_path(root / "a", other, steps=3, device="cpu")
    assert main(["path", str(root / "a"), str(tmp_path / "skip_params"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "differ in skip_params ([] vs ['first'])" in err and len(err.strip().splitlines()) == 1


def test_layer_norms_of_biprop_give_the_effective_weights(tmp_path, capsys):
    """Biprop computes with alpha * sign(W) * M, whose norm is alpha * sqrt(kept): norms reports it beside the
    random W's, labelled."""
    from supermask.analysis.norms import layer_norms
    from supermask.core.convert import masked_layers, random_weight
    from supermask.run.train import load_run_model

    run = tmp_path / "biprop"
    assert main(["train", "digits", "model=small-conv", "width=0.25", "epochs=1", "method=biprop", "-q",
                 f"out_dir={run}"]) == 0
    result = layer_norms(run)
    _, _, model, _ = load_run_model(run, device="cpu")
    for row, (_, layer, p) in zip(result["layers"], masked_layers(model)):
        w, m = random_weight(layer), p.mask()
        alpha = float(w[m].abs().mean())
        assert row["alpha"] == pytest.approx(alpha, rel=1e-6)
        assert row["effective"] == pytest.approx(alpha * math.sqrt(int(m.sum())), rel=1e-5)
        assert row["kept"] == pytest.approx(float(w[m].norm()))  # the random W's, as before
        assert row["effective"] != pytest.approx(row["kept"])
    capsys.readouterr()
    assert main(["norms", str(run), "--out", str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    assert "effective: of the weight the network computes with" in out and "alpha=" in out


def test_layer_norms_of_edge_popup_effective_is_kept(two_seeds_and_dense):
    from supermask.analysis.norms import layer_norms

    for row in layer_norms(two_seeds_and_dense / "a")["layers"]:
        assert row["effective"] == pytest.approx(row["kept"]) and "alpha" not in row
