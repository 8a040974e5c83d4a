"""Multicoated supermasks (method=multicoat): the multiplicity and its C-fold straight-through gradient by hand, the
inits, the config, and a run that exports its coats to a .smask and rebuilds exactly."""

import json
import math
import re

import pytest
import torch

from supermask import build_model, convert
from supermask.cli import main
from supermask.core.convert import masked_layers
from supermask.core.methods import EdgePopup
from supermask.core.multicoat import Multicoat, draw_fan_out_scores
from supermask.errors import ConfigError
from supermask.export.smask import header_of
from supermask.multi.together import check_group
from supermask.run.config import make_config, parse_overrides


def test_multiplicity_and_gradient_by_hand():
    p = Multicoat(torch.tensor([[0.9, -0.1], [0.5, -0.7]]), 0.25, rates=(0.25, 0.5, 0.75))
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # coats keep the top 3, 2 and 1 of |S| (0.9, 0.7, 0.5): m counts the coats holding each weight
    assert p.multiplicity().tolist() == [[3, 0], [1, 2]]
    assert p.mask().tolist() == [[True, False], [True, True]]  # coat 1: m > 0
    eff = p(w)
    assert eff.tolist() == [[3.0, 0.0], [3.0, 8.0]]  # W * m, no division by C
    eff.sum().backward()
    # every coat passes the whole gradient: C * dL/dW_eff * W * sign(S)
    assert p.scores.grad.tolist() == [[3.0, -6.0], [9.0, -12.0]]


def test_the_mean_scale_divides_by_c_by_hand():
    p = Multicoat(torch.tensor([[0.9, -0.1], [0.5, -0.7]]), 0.25, rates=(0.25, 0.5, 0.75), scale="mean")
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    eff = p(w)
    torch.testing.assert_close(eff, torch.tensor([[3.0, 0.0], [3.0, 8.0]]) / 3)  # W * m / C
    eff.sum().backward()
    # C coats' gradient over C: Edge-Popup's, dL/dW_eff * W * sign(S)
    torch.testing.assert_close(p.scores.grad, torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    with pytest.raises(ConfigError, match="unknown multicoat_scale 'half'"):
        make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.5, 0.8], "multicoat_scale": "half"})
    with pytest.raises(ConfigError, match="applies only to method=multicoat"):
        make_config("digits", {"multicoat_scale": "mean"})


def test_the_score_gradient_is_c_times_edge_popups():
    gen = torch.Generator().manual_seed(0)
    scores, w, g = (torch.randn(16, 8, generator=gen) for _ in range(3))
    multi, single = Multicoat(scores.clone(), 0.5, rates=(0.5, 0.7, 0.9, 0.95)), EdgePopup(scores.clone(), 0.5)
    (multi(w) * g).sum().backward()
    (single(w) * g).sum().backward()
    torch.testing.assert_close(multi.scores.grad, 4 * single.scores.grad)


def test_inits_are_the_published_ones():
    s = draw_fan_out_scores((64, 32, 3, 3), seed=0, name="x")
    assert float(s.std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)  # N(0, 2 / fan_out)
    model = convert(build_model("conv2", width=0.25), "multicoat", 0.7, options={"rates": (0.7, 0.9)})
    for _, layer, p in masked_layers(model):
        w = layer.parametrizations.weight.original
        # sign(W) * sqrt(2 / (fan_in * (1 - p_1))): the fan scaled by coat 1's keep fraction
        torch.testing.assert_close(w.abs(), torch.full_like(w, math.sqrt(2 / (w[0].numel() * 0.3))))


def test_multicoat_keys_are_checked():
    assert make_config("digits", {"method": "multicoat", "prune_rate": 0.7}).multicoat_prune_rates == [0.7, 0.9212, 0.9685]
    given = make_config("digits", {"method": "multicoat", **parse_overrides(["multicoat_prune_rates=[0.5, 0.8]"])})
    assert given.multicoat_prune_rates == [0.5, 0.8]
    with pytest.raises(ConfigError, match=r"needs its coats: multicoat_prune_rates=\[0.5, ...\]"):
        make_config("digits", {"method": "multicoat"})
    with pytest.raises(ConfigError, match="must start with prune_rate=0.5"):
        make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.6, 0.8]})
    with pytest.raises(ConfigError, match="must increase"):
        make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="applies only to method=multicoat"):
        make_config("digits", {"multicoat_prune_rates": [0.5, 0.8]})
    with pytest.raises(ConfigError, match="prune_scope"):
        make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.5, 0.8], "prune_scope": "global"})
    with pytest.raises(ConfigError, match="does not mask by a top-k"):
        check_group([make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.5, 0.8],
                                            "score_seed": i, "out_dir": f"r{i}"}) for i in range(2)])


def test_a_multicoat_run_exports_its_coats_and_rebuilds_exactly(tmp_path, capsys):
    keys = ["method=multicoat", "prune_rate=0.5", "multicoat_prune_rates=[0.5, 0.8, 0.9]", "multicoat_scale=mean",
            "epochs=2", "threads=1"]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["test_acc"] > 0.6
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    report = capsys.readouterr().out
    header = header_of(tmp_path / "net.smask")
    assert (header["multicoat_prune_rates"], header["multicoat_scale"]) == ([0.5, 0.8, 0.9], "mean")
    assert all(len(layer["levels"]) == 2 for layer in header["layers"])  # coats 2 and 3, each over the one before
    # the bytes of all coats against the entropy of the multiplicity (each coat's bits over the one before)
    assert 1.0 <= float(re.search(r"([\d.]+)x their entropy bound", report).group(1)) < 1.03
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]  # the same network, exactly


def test_norms_report_the_effective_weight_times_the_multiplicity(tmp_path):
    from supermask.analysis.norms import layer_norms
    from supermask.run.train import load_run_model, run

    run(make_config("digits", {"method": "multicoat", "multicoat_prune_rates": [0.5, 0.8], "epochs": 1,
                               "width": 0.25, "threads": 1, "out_dir": str(tmp_path / "r")}), progress=False)
    rows = {r["layer"]: r for r in layer_norms(tmp_path / "r")["layers"]}
    model = load_run_model(tmp_path / "r", device="cpu")[2]
    for name, layer, p in masked_layers(model):
        w, m = layer.parametrizations.weight.original, p.multiplicity()
        assert rows[name]["effective"] == pytest.approx(float((w * m).norm()), rel=1e-5)
        assert rows[name]["effective"] > rows[name]["kept"]  # coat 2 doubles a fifth of the weights
