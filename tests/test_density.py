"""Per-layer densities: SupSup's Erdős–Rényi budget (layer_density=er) by hand, in a run, and through a .smask."""

import json

import pytest

from supermask.cli import main
from supermask.core.density import er_prune_rates
from supermask.errors import ConfigError
from supermask.run.config import make_config


def test_the_er_budget_by_hand():
    # a: (4, 2), n 8, (c_in + c_out) / n = 0.75; b: (10, 10), n 100, 0.2. Total density 0.3 of 108 weights: with a
    # capped at 0.5, (0.5 * 8 + 0.2 s * 100) / 108 = 0.3 gives s = 1.42, so b keeps 0.284
    rates = er_prune_rates({"a": (4, 2), "b": (10, 10)}, 0.7)
    assert rates["a"] == pytest.approx(0.5)
    assert rates["b"] == pytest.approx(1 - 0.2 * 1.42)
    # a 3x3 conv: (c_in + c_out) / (c_in c_out 9); equal shapes get equal rates, and larger layers keep less
    rates = er_prune_rates({"c1": (16, 3, 3, 3), "c2": (32, 16, 3, 3), "c3": (32, 16, 3, 3), "fc": (10, 512)}, 0.9)
    assert rates["c2"] == rates["c3"] and rates["c1"] < rates["c2"] and rates["fc"] < rates["c2"]
    total = 16 * 27 + 2 * 32 * 144 + 5120
    kept = 16 * 27 * (1 - rates["c1"]) + 2 * 32 * 144 * (1 - rates["c2"]) + 5120 * (1 - rates["fc"])
    assert kept / total == pytest.approx(0.1)


@pytest.mark.parametrize("overrides, message", [
    ({"layer_density": "er", "prune_rate": 0.4}, "keeps at most half of each layer"),
    ({"layer_density": "er", "method": "gem-miner", "prune_rate": 0.9}, "for edge-popup and biprop"),
    ({"layer_density": "er", "prune_rate": 0.9, "prune_scope": "global"}, "choose one"),
    ({"layer_density": "erk"}, "layer_density"),
])
def test_er_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("digits", overrides)


def test_an_er_run_keeps_each_layers_share_and_rebuilds_from_its_smask(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "digits", "layer_density=er", "prune_rate=0.8", "epochs=1", "threads=1", f"out_dir={out}",
                 "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    density = summary["layer_density"]
    shapes = {k: tuple(v["shape"]) for k, v in summary["convert"]["parameters"].items() if v["status"] == "masked"}
    rates = er_prune_rates(shapes, 0.8)
    for name, kept in density.items():
        n = 1
        for d in shapes[name + ".weight"]:
            n *= d
        assert kept == pytest.approx(1 - rates[name + ".weight"], abs=1 / n + 1e-6)
    assert summary["params_kept"] / summary["params_total"] == pytest.approx(0.2, abs=0.01)
    capsys.readouterr()
    assert main(["export", str(out), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
