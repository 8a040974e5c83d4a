"""Signed supermasks (method=signed-supermask): the ternary mask, its fixed threshold and identity gradient by hand,
the inits, decoupled weight decay, the ELU networks, and a run whose .smask stores the inversions and rebuilds
exactly."""

import json
import math

import pytest
import torch
from torch import nn

from supermask import build_model, convert
from supermask.cli import main
from supermask.core.convert import masked_layers
from supermask.core.init import ELUS_FACTOR
from supermask.core.signed import SignedSupermask, draw_xavier_scores
from supermask.errors import ConfigError
from supermask.export.smask import header_of
from supermask.run.config import make_config
from supermask.run.loop import decay_


def test_keep_hide_invert_by_hand():
    p = SignedSupermask(torch.tensor([[1.0, -0.3], [0.5, -0.9]]), 0.5, threshold=0.4)
    assert float(p.tau) == pytest.approx(0.4)  # 0.4 * max |m| at init
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert p.signs().tolist() == [[1.0, 0.0], [1.0, -1.0]]  # +1 above tau, -1 below -tau, 0 between
    eff = p(w)
    assert eff.tolist() == [[1.0, 0.0], [3.0, -4.0]]
    (eff * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    # identity straight-through: dL/dm = dL/dW_eff * W, for every score (no |.|, no sign(m))
    assert p.scores.grad.tolist() == [[1.0, 4.0], [9.0, 16.0]]
    with torch.no_grad():
        p.scores.mul_(0.1)  # the threshold stays where init put it
    assert float(p.tau) == pytest.approx(0.4) and not p.mask().any()
    assert p.levels()[1].tolist() == [[False, False], [False, False]]


def test_levels_store_the_inversions_among_the_kept():
    p = SignedSupermask(torch.tensor([1.0, -1.0, 0.1, -0.2, 0.8]), 0.5, threshold=0.3)
    kept, inverted = p.levels()
    assert kept.tolist() == [True, True, False, False, True] and inverted.tolist() == [False, True, False, False, False]
    assert p.level_value([kept, inverted]).tolist() == p.signs().tolist() == [1.0, -1.0, 0.0, 0.0, 1.0]


def test_inits_are_the_published_ones():
    s = draw_xavier_scores((64, 32, 3, 3), seed=0, name="x")
    bound = math.sqrt(2) / math.sqrt(32 * 9 + 64 * 9)
    assert float(s.abs().max()) <= bound and float(s.abs().max()) > 0.99 * bound  # U(+-sqrt(2 / (fan_in + fan_out)))
    model = convert(build_model("conv4-elu", width=0.25), "signed-supermask", 0.5)
    assert any(isinstance(m, nn.ELU) for m in model.modules()) and not any(isinstance(m, nn.ReLU) for m in model.modules())
    for _, layer, p in masked_layers(model):
        w = layer.parametrizations.weight.original
        torch.testing.assert_close(w.abs(), torch.full_like(w, math.sqrt(2 / w[0].numel()) * ELUS_FACTOR))


def test_decoupled_decay_scales_the_trained_tensors_and_not_the_gradient():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([p], lr=0.5)
    p.grad = torch.tensor([0.2, 0.2])
    opt.step()
    decay_(opt, 0.1)  # after the step: (1 - 0.1) * (p - lr * g)
    assert p.tolist() == pytest.approx([0.9 * 0.9, 0.9 * -2.1])
    cfg = make_config("digits", {"weight_decay_mode": "decoupled", "weight_decay": 0.01})
    from supermask.run.train import optimizer_for

    assert optimizer_for(cfg, [nn.Parameter(torch.zeros(1))]).param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="unknown weight_decay_mode 'sgdw'"):
        make_config("digits", {"weight_decay_mode": "sgdw"})


def test_signed_keys_are_checked():
    assert make_config("digits", {"method": "signed-supermask"}).signed_threshold == 0.4
    with pytest.raises(ConfigError, match="applies only to method=signed-supermask"):
        make_config("digits", {"signed_threshold": 0.3})
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        make_config("digits", {"method": "signed-supermask", "signed_threshold": 1.5})


def test_a_signed_run_sparsifies_exports_its_inversions_and_rebuilds_exactly(tmp_path, capsys):
    keys = ["method=signed-supermask", "epochs=3", "weight_decay_mode=decoupled", "weight_decay=0.02", "threads=1"]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["test_acc"] > 0.6
    assert summary["params_kept"] < 0.4 * summary["params_total"]  # the decay hid most weights (60% are kept at init)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    layers = header_of(tmp_path / "net.smask")["layers"]
    assert all(len(layer["levels"]) == 1 for layer in layers)  # the inversions, over the kept weights
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]  # the same network, exactly


def test_the_exponential_schedule_decays_by_0_9_every_10_epochs():
    from supermask.run.loop import learning_rate

    cfg = make_config("digits", {"lr": 0.05, "lr_schedule": "exponential", "epochs": 100})
    assert [learning_rate(cfg, e) for e in (0, 10, 25)] == pytest.approx([0.05, 0.045, 0.05 * 0.9 ** 2.5])


def test_a_mask_path_refuses_a_thresholded_method(tmp_path):
    from supermask.analysis.paths import mask_path
    from supermask.run.train import run

    for seed in (0, 1):
        run(make_config("digits", {"method": "signed-supermask", "epochs": 1, "width": 0.25, "threads": 1,
                                   "score_seed": seed, "out_dir": str(tmp_path / f"r{seed}")}), progress=False)
    with pytest.raises(ConfigError, match="method=signed-supermask masks by a threshold"):
        mask_path(tmp_path / "r0", tmp_path / "r1", device="cpu")
