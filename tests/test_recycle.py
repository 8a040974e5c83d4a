"""IWR and IteRand steps on hand-made layers, their schedules, and resume across them."""

import json

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError
from supermask.run.config import make_config
from supermask.core.convert import random_weight
from supermask.core.iterand import rerandomize_
from supermask.core.recycle import recycle_, recycle_indices
from supermask.run.schedule import epoch_fires, step_fires
from supermask.run.train import run


def _layer(weight, scores, method="edge-popup", prune_rate=0.5):
    model = supermask.convert(nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False)), method, prune_rate)
    with torch.no_grad():
        random_weight(model[0]).copy_(weight)
        supermask.score_parameters(model)[0].copy_(scores)
    return model


# 10 weights with values 0..9 (as 10 + i, to see copies), scores whose |.| ranks them in a known order
W10 = torch.arange(10, dtype=torch.float32).add(10).view(2, 5)
# |S| ascending order of flat positions: 7, 2, 9, 0, 4, 1, 8, 3, 6, 5
S10 = torch.tensor([0.4, -0.6, 0.2, 0.8, -0.5, 1.0, 0.9, -0.1, 0.7, 0.3]).view(2, 5)


def test_recycle_hand_computed_pairing():
    model = _layer(W10, S10)
    changed = recycle_(model, 0.3)  # n = 3: the three lowest (7, 2, 9) take the three highest (8? no: 3, 6, 5)
    # ascending order: 7, 2, 9, 0, 4, 1, 8, 3, 6, 5 -> lowest three [7, 2, 9], highest three [3, 6, 5]
    # pairing keeps order: 7 <- 3 (third highest), 2 <- 6, 9 <- 5 (the highest)
    expected = W10.flatten().clone()
    expected[7], expected[2], expected[9] = 13.0, 16.0, 15.0
    assert torch.equal(random_weight(model[0]).flatten(), expected)
    assert changed == {"0": 3}
    assert torch.equal(supermask.score_parameters(model)[0].detach(), S10)  # scores untouched


def test_recycle_ablation_copies_ranks_n_to_2n():
    model = _layer(W10, S10)
    recycle_(model, 0.3, ablation=True)
    # ranks [3, 6) from the bottom are positions 0, 4, 1: 7 <- 0, 2 <- 4, 9 <- 1
    expected = W10.flatten().clone()
    expected[7], expected[2], expected[9] = 10.0, 14.0, 11.0
    assert torch.equal(random_weight(model[0]).flatten(), expected)


def test_recycle_rounds_down_and_validates_rate():
    dest, source = recycle_indices(torch.rand(7), 0.2)  # floor(1.4) = 1
    assert dest.numel() == source.numel() == 1
    assert recycle_(_layer(W10, S10), 0.05) == {"0": 0}  # floor(0.5) = 0: nothing moves
    with pytest.raises(ConfigError, match="0.6"):
        recycle_(_layer(W10, S10), 0.6)
    with pytest.raises(ConfigError, match="mask method"):
        recycle_(supermask.convert(nn.Linear(3, 3), "dense"), 0.1)


def test_recycle_keeps_the_mask_and_copies_only_existing_values():
    model = supermask.convert(supermask.build_model("conv2", width=0.1), "biprop", 0.5)
    before = supermask.masks(model)
    values = {n: set(random_weight(m).flatten().tolist()) for n, m, _ in supermask.masked_layers(model)}
    changed = recycle_(model, 0.2)
    after = supermask.masks(model)
    for name in before:
        assert torch.equal(before[name], after[name])
        assert set(random_weight(dict(model.named_modules())[name]).flatten().tolist()) <= values[name]
        assert changed[name] > 0


def test_recycle_invalidates_the_cached_evaluation_weight():
    model = _layer(W10, S10, prune_rate=0.2).eval()  # prunes positions 7 and 2; position 9 is kept and recycled
    with torch.no_grad():
        before = model[0].weight.clone()
        recycle_(model, 0.3)
        after = model[0].weight
    assert before.flatten()[9] == 19.0 and after.flatten()[9] == 15.0


def test_rerandomize_changes_only_pruned_weights_about_r_of_them():
    model = supermask.convert(supermask.build_model("conv2", width=0.25), "edge-popup", 0.7, weight_init="kaiming-normal")
    masks = supermask.masks(model)
    before = {n: random_weight(m).clone() for n, m, _ in supermask.masked_layers(model)}
    changed = rerandomize_(model, 0.1, seed=5)
    total_pruned = total_changed = 0
    for name, layer, _ in supermask.masked_layers(model):
        diff = random_weight(layer) != before[name]
        assert not (diff & masks[name]).any()  # kept weights never change
        assert int(diff.sum()) == changed[name]
        total_pruned += int((~masks[name]).sum())
        total_changed += changed[name]
    assert abs(total_changed / total_pruned - 0.1) < 0.01  # ~270,000 pruned weights
    assert all(torch.equal(supermask.masks(model)[n], masks[n]) for n in masks)


def test_rerandomize_is_reproducible_from_its_seed():
    def weights(seed):
        model = supermask.convert(supermask.build_model("conv2", width=0.1), "edge-popup", 0.5)
        rerandomize_(model, 0.3, seed)
        return [random_weight(m).clone() for _, m, _ in supermask.masked_layers(model)]

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))


def test_rerandomize_draws_from_the_layers_init():
    model = supermask.convert(nn.Sequential(nn.Linear(300, 200, bias=False)), "edge-popup", 0.9)  # signed constant
    const = random_weight(model[0]).abs().max().item()
    rerandomize_(model, 1.0, seed=0)
    assert torch.allclose(random_weight(model[0]).abs(), torch.full((200, 300), const))
    kept = supermask.convert(nn.Sequential(nn.Linear(4, 4)), "edge-popup", 0.5, weight_init="keep")
    with pytest.raises(ConfigError, match="keep"):
        rerandomize_(kept, 0.1, seed=0)


@pytest.mark.parametrize("every, warmup, epochs, expected", [
    (3, 0, 10, [3, 6]),          # not at 0, not at the last epoch (9)
    (3, 0, 13, [3, 6, 9]),       # 12 is the last epoch
    (10, 50, 200, [60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190]),  # Biprop+IWR ResNet-18
    (1, 0, 5, [1, 2, 3]),
    (1, 2, 6, [3, 4]),
    (5, 0, 5, []),
])
def test_epoch_schedule_timing(every, warmup, epochs, expected):
    assert [t for t in range(epochs) if epoch_fires(t, every, epochs, warmup)] == expected


def test_step_schedule_timing():
    assert [s for s in range(1, 1000) if step_fires(s, 300)] == [300, 600, 900]
    assert not any(step_fires(s, None) for s in range(10))
    # before every K-th step, as IteRand's published trainer redraws: after the steps K - 1, 2K - 1, ...
    assert [s for s in range(1, 1000) if step_fires(s, 300, "before")] == [299, 599, 899]
    assert [s for s in range(1, 6) if step_fires(s, 1, "before")] == [1, 2, 3, 4, 5]


def test_rerandomize_to_zero_sets_the_chosen_pruned_weights_to_zero():
    def model_():  # Gaussian weights: never 0, and a redraw from the init changes every weight it picks
        return supermask.convert(supermask.build_model("conv2", width=0.1), "edge-popup", 0.5, weight_init="kaiming-normal")

    model = model_()
    masks = supermask.masks(model)
    before = {n: random_weight(m).clone() for n, m, _ in supermask.masked_layers(model)}
    changed = rerandomize_(model, 0.3, seed=4, redraw="zero")
    for name, layer, _ in supermask.masked_layers(model):
        w = random_weight(layer)
        zeroed = w == 0
        assert not (zeroed & masks[name]).any() and torch.equal(w[masks[name]], before[name][masks[name]])
        assert int(zeroed.sum()) == changed[name] > 0
    # the same weights are chosen as by a redraw from the init (the coin is the same stream)
    again = model_()
    rerandomize_(again, 0.3, seed=4)
    for (name, layer, _), (_, other, _) in zip(supermask.masked_layers(model), supermask.masked_layers(again)):
        assert torch.equal(random_weight(layer) == 0, random_weight(other) != before[name])
    with pytest.raises(ConfigError, match="unknown iterand_redraw 'ones'"):
        rerandomize_(model, 0.3, seed=4, redraw="ones")


def test_config_schedules_and_aliases():
    cfg = make_config("conv4", {"method": "edge-popup+iwr"})
    assert (cfg.method, cfg.iwr_every, cfg.iwr_rate, cfg.label) == ("edge-popup", 3, 0.1, "edge-popup+iwr")
    assert make_config("conv6", {"method": "edge-popup+iwr"}).iwr_every == 10
    r18 = make_config("resnet18", {"method": "biprop+iwr"})
    assert (r18.iwr_every, r18.iwr_rate, r18.iwr_warmup, r18.epochs) == (10, 0.2, 50, 200)
    it = make_config("conv4", {"method": "iterand"})
    assert (it.iterand_every_steps, it.iterand_rate, it.label) == (300, 0.1, "iterand")
    assert make_config("conv4", {"iwr_every_fraction": 0.3, "epochs": 10}).iwr_every == 3
    assert make_config("conv4", {"method": "biprop+iwr", "iwr_every": 4}).iwr_every == 4  # explicit wins
    for bad, fragment in [({"method": "dense", "iwr_every": 3}, "mask method"), ({"iwr_rate": 0.7, "iwr_every": 2}, "iwr_rate"),
                          ({"iterand_timing": "during"}, "iterand_timing"), ({"iterand_redraw": "ones"}, "iterand_redraw"),
                          ({"iwr_every": 0}, "iwr_every"), ({"iterand_every_steps": 3, "iterand_every_epochs": 1}, "not both")]:
        with pytest.raises(ConfigError, match=fragment):
            make_config("conv4", bad)


def _digits(tmp_path, name, **overrides):
    base = {"model": "small-conv", "dataset": "digits", "width": 0.25, "epochs": 4, "batch_size": 128,
            "out_dir": str(tmp_path / name)}
    return make_config(None, {**base, **overrides})


def _check_schedule_log(log: list[dict], cfg, run_dir) -> None:
    """The steps fired when the schedule says, each changed weights, and the log accounts for every weight that
    differs from the seed's at the end."""
    from supermask.run.checkpoint import load_tensors
    from supermask.data import load_dataset
    from supermask.run.train import build

    initial = {name: random_weight(layer).detach().clone()
               for name, layer, _ in supermask.masked_layers(build(cfg, load_dataset("digits")))}
    final, _ = load_tensors(run_dir / "checkpoint.safetensors")
    final = {name: final[f"model.{name}.parametrizations.weight.original"] for name in initial}
    steps = sorted({(e["epoch"], e["step"]) for e in log})
    if cfg.iwr_every:  # at the end of epochs 1 and 2 (0-based; not 0, not the last), logged 1-based
        assert [epoch for epoch, _ in steps] == [2, 3]
        first = [e for e in log if e["epoch"] == 2]
        # the first step: all weights still distinct, so every one of the floor(r n) overwritten ones changes
        assert {e["layer"]: e["changed"] for e in first} == {n: int(cfg.iwr_rate * w.numel()) for n, w in initial.items()}
    elif cfg.iterand_timing == "before":  # before every 5th: after the steps 4, 9, ..., 44 of the 4 x 12
        assert [step for _, step in steps] == list(range(4, 48, 5))
    else:  # every 5th of the 4 x 12 optimizer steps
        assert [step for _, step in steps] == list(range(5, 48, 5))
    for epoch, step in steps:
        assert sorted(e["layer"] for e in log if (e["epoch"], e["step"]) == (epoch, step)) == sorted(initial)
    assert all(e["changed"] > 0 for e in log)
    for name, w in initial.items():
        differ = int((final[name] != w).sum())
        assert 0 < differ <= sum(e["changed"] for e in log if e["layer"] == name)


@pytest.mark.parametrize("schedule", [
    {"method": "biprop", "iwr_every": 1, "iwr_rate": 0.2},
    {"method": "edge-popup", "iterand_every_steps": 5, "iterand_rate": 0.2},
    {"method": "edge-popup", "iterand_every_steps": 5, "iterand_rate": 0.2, "iterand_timing": "before",
     "iterand_redraw": "zero"},
])
def test_resume_across_schedule_steps_equals_an_uninterrupted_run(tmp_path, monkeypatch, schedule):
    full = run(_digits(tmp_path, "full", **schedule), progress=False)
    log = [json.loads(line) for line in (tmp_path / "full" / "schedule.jsonl").read_text().splitlines()]
    _check_schedule_log(log, _digits(tmp_path, "full", **schedule), tmp_path / "full")
    assert full["params_kept"] == full["params_total"] - sum(
        int(torch.numel(m)) - int(m.sum()) for m in supermask.masks(supermask.convert(
            supermask.build_model("small-conv", in_channels=1, image_size=8, width=0.25), "edge-popup", 0.5)).values())

    import supermask.run.loop as loop

    real = loop.end_of_epoch
    calls = {"n": 0}

    def killed_after_two_epochs(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "end_of_epoch", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run(_digits(tmp_path, "resumed", **schedule), progress=False)
    monkeypatch.setattr(loop, "end_of_epoch", real)
    resumed = run(_digits(tmp_path, "resumed", **schedule), resume=True, progress=False)
    assert resumed["test_acc"] == full["test_acc"]
    assert (tmp_path / "full" / "masks.safetensors").read_bytes() == (tmp_path / "resumed" / "masks.safetensors").read_bytes()
    assert (tmp_path / "full" / "schedule.jsonl").read_text() == (tmp_path / "resumed" / "schedule.jsonl").read_text()
    from supermask.run.checkpoint import load_tensors

    a, _ = load_tensors(tmp_path / "full" / "checkpoint.safetensors")
    b, _ = load_tensors(tmp_path / "resumed" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("every", [1, 2, 5, 7, 48, 49])
@pytest.mark.parametrize("timing", ["after", "before"])
def test_planned_iterand_steps_count_the_steps_that_fire(every, timing):
    from supermask.run.schedule import planned_steps

    cfg = make_config("conv4", {"iterand_every_steps": every, "iterand_timing": timing, "epochs": 4})
    assert planned_steps(cfg, 12)["iterand"] == sum(step_fires(s, every, timing) for s in range(1, 49))
