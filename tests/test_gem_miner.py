"""Gem-Miner (method=gem-miner): its mask and gradient by hand, its regularizer and clamp, its pruning rounds (exact
and as published), and a run through the command line that exports, evaluates and resumes."""

import json
import math

import pytest
import torch
from torch import nn

import supermask.run.loop
from supermask import build_model, convert
from supermask.cli import main
from supermask.core.convert import masked_layers
from supermask.core.gem_miner import (GemMiner, clamp_scores, kept_after, kept_from, prune_round, published_keep,
                                      regularizer, round_of, rounds)
from supermask.errors import ConfigError
from supermask.run.checkpoint import load_tensors
from supermask.run.config import make_config
from supermask.multi.together import check_group


def test_mask_and_gradient_by_hand():
    p = GemMiner(torch.tensor([[0.7, 0.2], [0.5, 0.9]]), prune_rate=0.5)
    p.flag.copy_(torch.tensor([[True, True], [True, False]]))
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    # 1[p > 0.5] * flag: 0.5 is not above the threshold, 0.9's weight is pruned for good
    assert p.mask().tolist() == [[True, False], [False, False]]
    eff = p(w)
    assert eff.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    (eff * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    # straight through to p, times W and the flag, without |.|: g * W * flag
    assert p.scores.grad.tolist() == [[1.0, -4.0], [9.0, 0.0]]
    with torch.no_grad():
        assert p(w).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_scores_start_in_the_unit_interval_and_weights_are_the_signed_constant():
    model = convert(build_model("conv2", width=0.25), "gem-miner", 0.5, score_seed=3)
    for _, layer, p in masked_layers(model):
        assert 0 <= float(p.scores.detach().min()) and float(p.scores.detach().max()) <= 1 and float(p.scores.detach().mean()) == pytest.approx(0.5, abs=0.05)
        w = layer.parametrizations.weight.original
        fan_in = w[0].numel()
        assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / fan_in)))  # +-sqrt(2 / fan_in), unscaled


def test_regularizer_and_clamp():
    model = convert(build_model("small-conv", in_channels=1, image_size=8, width=0.25), "gem-miner", 0.5)
    cfg = make_config("digits", {"method": "gem-miner", "gem_lambda": 0.01})
    layers = [p for _, _, p in masked_layers(model)]
    expected = 0.01 * sum(float((p.scores.detach() ** 2).sum()) for p in layers)
    term = regularizer(model, cfg)
    assert float(term) == pytest.approx(expected, rel=1e-6)
    term.backward()
    for p in layers:  # d/dp lambda p^2 = 2 lambda p, every score, pruned or not
        torch.testing.assert_close(p.scores.grad, 0.02 * p.scores.detach())
    with torch.no_grad():
        layers[0].scores.view(-1)[:3] = torch.tensor([-0.3, 1.7, 0.4])
    assert clamp_scores(model, cfg, epoch=0, step=1) == []
    assert layers[0].scores.view(-1)[:3].tolist() == pytest.approx([0.0, 1.0, 0.4])


def test_rounds_fire_after_the_published_epochs():
    assert rounds(150, 5) == 29  # the published ResNet-20 recipe
    fired = [e for e in range(150) if round_of(e, 150, 5) is not None]
    assert fired == list(range(5, 150, 5))[:29] and fired[-1] == 145
    assert [round_of(e, 150, 5) for e in (5, 10, 145)] == [1, 2, 29]
    assert [e for e in range(4) if round_of(e, 4, 1) is not None] == [1, 2, 3]
    assert rounds(5, 5) == 0 and all(round_of(e, 5, 5) is None for e in range(5))


@pytest.mark.parametrize("n, prune_rate, n_rounds", [(268_336, 1 - 0.0144, 29), (1000, 0.5, 3), (37, 0.9, 7), (10, 0.29, 2)])
def test_exact_rounds_land_exactly_on_the_target_and_never_revive_a_weight(n, prune_rate, n_rounds):
    gen = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=gen).round(decimals=2)  # many ties
    active = torch.ones(n, dtype=torch.bool)
    counts = []
    for i in range(1, n_rounds + 1):
        keep = kept_from(scores, active, kept_after(i, n, n_rounds, prune_rate))
        assert not (keep & ~active).any()  # pruned for good
        active = keep
        counts.append(int(active.sum()))
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == n - math.floor(prune_rate * n)  # floor(p n) pruned, as every supermask mask
    assert counts[0] == round(n * (1 - prune_rate) ** (1 / n_rounds))


def test_kept_from_keeps_the_largest_active_scores_ties_to_the_lower_index():
    scores = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.3])
    active = torch.tensor([True, False, True, True, True])
    assert kept_from(scores, active, 2).tolist() == [True, False, True, False, False]


def test_a_published_round_by_hand_and_its_ties():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.9, 0.3])
    active = torch.ones(5, dtype=torch.bool)
    # ceil(0.4 * 5) = 2 pruned: the threshold is the 2nd smallest (0.3), strictly above it is kept
    assert published_keep(scores, active, 0.4).tolist() == [False, True, True, True, False]
    # ceil(0.6 * 5) = 3: the threshold is 0.4, and both 0.4s go: 4 pruned (ties prune more)
    assert published_keep(scores, active, 0.6).tolist() == [False, False, False, True, False]


def test_published_rounds_end_a_few_weights_below_the_target_on_resnet20():
    # docs/fidelity.md: ResNet-20's 268,336 weights at 1.44% density, 29 rounds of ceil(r n_active), keep 3,861
    # against the 3,864 of floor; continuous scores have no ties, so the count is the recursion's
    n, d = 268_336, 0.0144
    r = 1 - d ** (1 / 29)
    scores, active = torch.rand(n, generator=torch.Generator().manual_seed(0)), torch.ones(n, dtype=torch.bool)
    for _ in range(29):
        active = published_keep(scores, active, r)
    assert int(active.sum()) == 3861 < n - math.floor((1 - d) * n)


def test_a_model_round_prunes_globally_and_logs_each_layer():
    model = convert(build_model("conv2", width=0.25), "gem-miner", 0.75, score_seed=0)
    cfg = make_config("conv2", {"method": "gem-miner", "prune_rate": 0.75, "epochs": 3, "gem_period": 1})
    total = sum(p.flag.numel() for _, _, p in masked_layers(model))
    events = prune_round(model, cfg, epoch=1, step=10) + prune_round(model, cfg, epoch=2, step=20)
    kept = sum(int(p.flag.sum()) for _, _, p in masked_layers(model))
    assert kept == total - math.floor(0.75 * total)  # 2 rounds: the second lands on d
    assert {e["kind"] for e in events} == {"gem-prune"} and sum(e["changed"] for e in events) == total - kept
    assert prune_round(model, cfg, epoch=0, step=1) == []  # no round after epoch 0
    densities = [float(p.flag.float().mean()) for _, _, p in masked_layers(model)]
    assert len(set(densities)) > 1  # global: each layer's share follows its scores


def test_gem_miner_keys_are_checked():
    cfg = make_config("digits", {"method": "gem-miner"})
    assert (cfg.gem_period, cfg.gem_lambda, cfg.gem_rounding) == (5, 1e-4, "exact")
    with pytest.raises(ConfigError, match="gem_period=3 applies only to method=gem-miner"):
        make_config("digits", {"gem_period": 3})
    with pytest.raises(ConfigError, match="unknown gem_rounding 'rounded'"):
        make_config("digits", {"method": "gem-miner", "gem_rounding": "rounded"})
    with pytest.raises(ConfigError, match="gem_lambda=-1.0 must be >= 0"):
        make_config("digits", {"method": "gem-miner", "gem_lambda": -1})
    with pytest.raises(ConfigError, match="prune_scope"):
        make_config("digits", {"method": "gem-miner", "prune_scope": "global"})
    with pytest.raises(ConfigError, match="does not mask by a top-k"):
        check_group([make_config("digits", {"method": "gem-miner", "score_seed": i, "out_dir": f"r{i}"}) for i in range(2)])


def test_a_gem_miner_run_trains_exports_evaluates_and_resumes(tmp_path, monkeypatch, capsys):
    keys = ["method=gem-miner", "epochs=6", "gem_period=2", "prune_rate=0.5", "threads=1"]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    tensors, _ = load_tensors(tmp_path / "r" / "checkpoint.safetensors")
    flags = {k: v for k, v in tensors.items() if k.endswith(".flag")}
    total = sum(f.numel() for f in flags.values())
    assert sum(int(f.sum()) for f in flags.values()) == total - math.floor(0.5 * total)  # the flag lands on d
    assert summary["params_total"] == total and summary["params_kept"] <= total - math.floor(0.5 * total)
    assert summary["test_acc"] > 0.6  # 10 classes: chance is 0.1
    events = [json.loads(x) for x in (tmp_path / "r" / "schedule.jsonl").read_text().splitlines()]
    assert sorted({e["epoch"] for e in events}) == [3, 5]  # after the 0-based epochs 2 and 4; epoch 5 trains on
    scores = [v for k, v in tensors.items() if k.endswith(".scores")]
    assert all(0 <= float(s.min()) and float(s.max()) <= 1 for s in scores)  # clamped after every step

    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]

    # killed at the end of epoch 4, before its checkpoint: the resumed run starts from epoch 3's checkpoint, whose
    # flag holds the first round's pruning (without it, the second round would prune other weights)
    real, calls = supermask.run.loop.end_of_epoch, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(supermask.run.loop, "end_of_epoch", killed)
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'k'}", "-q"]) != 0
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(supermask.run.loop, "end_of_epoch", real)
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'k'}", "--resume", "-q"]) == 0
    assert (tmp_path / "k" / "masks.safetensors").read_bytes() == (tmp_path / "r" / "masks.safetensors").read_bytes()
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["test_acc"] == summary["test_acc"]


def test_resnet20_is_he_et_al_cifar_network():
    model = build_model("resnet20")
    weights = {n: p.numel() for n, p in model.named_parameters() if p.dim() > 1}
    assert sum(weights.values()) == 268_336 and len(weights) == 20  # 19 convs and the head, no shortcut weights
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    x = torch.randn(1, 16, 8, 8)
    block = model.layer2[0]
    pad = block.shortcut(x)  # option A: subsample, then zero channels half before and half after
    assert pad.shape == (1, 32, 4, 4)
    assert torch.equal(pad[:, 8:24], x[:, :, ::2, ::2]) and not pad[:, :8].any() and not pad[:, 24:].any()
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64


def test_the_published_recipe_is_a_built_in_config():
    cfg = make_config("gem-miner")
    assert (cfg.model, cfg.dataset, cfg.method, cfg.epochs, cfg.batch_size) == ("resnet20", "cifar10", "gem-miner", 150, 128)
    assert (cfg.prune_rate, cfg.gem_lambda, cfg.gem_period, cfg.lr, cfg.momentum, cfg.weight_decay) == \
        (0.9856, 1e-4, 5, 0.1, 0.9, 0.0)
    assert (cfg.weight_init, cfg.scale_fan, cfg.nesterov, cfg.lr_schedule) == ("signed-constant", False, False, "cosine")
    assert rounds(cfg.epochs, cfg.gem_period) == 29


def test_the_multistep_schedule_divides_by_10_at_80_and_120_of_150():
    from supermask.run.loop import learning_rate

    cfg = make_config("digits", {"lr": 0.01, "lr_schedule": "multistep", "epochs": 150})
    assert [learning_rate(cfg, e) for e in (0, 79, 80, 119, 120, 149)] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])


def test_finetuning_is_gem_miners_and_checked():
    assert make_config("digits", {"method": "gem-miner", "finetune_epochs": 3}).finetune_lr == 0.01
    with pytest.raises(ConfigError, match="method=edge-popup has no such stage"):
        make_config("digits", {"finetune_epochs": 3})
    with pytest.raises(ConfigError, match="finetune_lr=0.0 must be > 0"):
        make_config("digits", {"method": "gem-miner", "finetune_epochs": 3, "finetune_lr": 0})


def test_a_fine_tuned_gem_trains_its_flagged_weights_resumes_and_exports(tmp_path, monkeypatch, capsys):
    keys = ["method=gem-miner", "epochs=3", "gem_period=1", "prune_rate=0.8", "finetune_epochs=3", "threads=1"]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    tuned = [json.loads(x) for x in (tmp_path / "r" / "finetune_metrics.jsonl").read_text().splitlines()]
    assert summary["test_acc"] == tuned[-1]["test_acc"] and len(tuned) == 3
    assert summary["search_test_acc"] == json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    assert [round(t["lr"], 6) for t in tuned] == [0.01, 0.01, 0.0001]  # milestones at 2 of 3 (80/150 and 120/150)
    meta = load_tensors(tmp_path / "r" / "checkpoint.safetensors")[1]
    assert meta["finetune"]["step"] == 2 * meta["step"]  # the fine-tuning's steps count on from the search's
    tensors, _ = load_tensors(tmp_path / "r" / "checkpoint.safetensors")
    masks_saved, _ = load_tensors(tmp_path / "r" / "masks.safetensors")
    for key, mask in masks_saved.items():  # the mask is the flag (scores all 1), exactly 1 - p of the weights in all
        prefix = next(k for k in tensors if k.endswith(".flag") and k.startswith(f"model.{key}."))
        assert torch.equal(mask, tensors[prefix])
    assert summary["params_kept"] == summary["params_total"] - math.floor(0.8 * summary["params_total"])
    fresh = convert(build_model("small-conv", in_channels=1, image_size=8), "gem-miner", 0.8)
    (name, layer, p), = [x for x in masked_layers(fresh)][:1]
    trained = tensors[f"model.{name}.parametrizations.weight.original"]
    assert not torch.equal(trained, layer.parametrizations.weight.original)  # the weights moved

    # killed in the second stage's second epoch, it resumes there and ends the same
    real, calls = supermask.run.loop.end_of_epoch, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # 3 search epochs, then the fine-tuning's first two
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(supermask.run.loop, "end_of_epoch", killed)
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'k'}", "-q"]) != 0
    monkeypatch.setattr(supermask.run.loop, "end_of_epoch", real)
    assert "finetune" in load_tensors(tmp_path / "k" / "checkpoint.safetensors")[1]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'k'}", "--resume", "-q"]) == 0
    again, _ = load_tensors(tmp_path / "k" / "checkpoint.safetensors")
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)  # weights, scores, flags and optimizer
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["test_acc"] == summary["test_acc"]

    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 0  # the run's checkpoint holds the fine-tuned network
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_acc"] == evaluated["recorded_test_acc"] == summary["test_acc"]
    assert (evaluated["stage"], evaluated["epoch"]) == ("fine-tuning", 3)
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0  # the trained kept weights travel in the file
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
