"""convert() on any model: module tree kept, layer selection, seeds, init statistics, masks()."""

import math

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError
from supermask.core.convert import random_weight


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TinyTorchvisionLike(nn.Module):
    """Named like torchvision's ResNet: conv1, bn1, layer1..., fc with a bias."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_convert_keeps_the_module_tree_and_skips_first_and_last():
    model = TinyTorchvisionLike()
    names_before = [n for n, _ in model.named_modules()]
    out = supermask.convert(model, "edge-popup", 0.75, skip=["first", "last"])
    assert out is model
    assert isinstance(model.layer1[0].conv1, nn.Conv2d) and isinstance(model.fc, nn.Linear)
    assert [n for n, _ in model.named_modules() if "parametrizations" not in n] == names_before
    masks = supermask.masks(model)
    assert sorted(masks) == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.shape == (8, 8, 3, 3)
        assert int((~m).sum()) == math.floor(0.75 * 576)
    # only scores train; the skipped layers, biases and BatchNorm are frozen
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(n.endswith("scores") for n in trainable)
    y = model(torch.randn(2, 3, 6, 6))
    assert y.shape == (2, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in supermask.score_parameters(model))


def test_skip_by_glob_and_unknown_pattern():
    model = supermask.convert(TinyTorchvisionLike(), "biprop", 0.5, skip=["layer1.1.*"])
    assert sorted(supermask.masks(model)) == ["conv1", "fc", "layer1.0.conv1", "layer1.0.conv2"]
    with pytest.raises(ConfigError, match="nope"):
        supermask.convert(TinyTorchvisionLike(), skip=["nope"])


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="'popup'"):
        supermask.convert(TinyTorchvisionLike(), "popup")
    for p in (1.0, -0.1):
        with pytest.raises(ConfigError, match="prune_rate"):
            supermask.convert(TinyTorchvisionLike(), prune_rate=p)
    with pytest.raises(ConfigError, match="weight_init"):
        supermask.convert(TinyTorchvisionLike(), weight_init="xavier")
    model = supermask.convert(TinyTorchvisionLike())
    with pytest.raises(ConfigError, match="already converted"):
        supermask.convert(model)


def _weights(model):
    return {n: random_weight(m).clone() for n, m, _ in supermask.masked_layers(model)}


def test_weight_and_score_seeds_are_independent():
    a = supermask.convert(TinyTorchvisionLike(), weight_seed=1, score_seed=1)
    b = supermask.convert(TinyTorchvisionLike(), weight_seed=1, score_seed=2)
    c = supermask.convert(TinyTorchvisionLike(), weight_seed=2, score_seed=1)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same weights, whatever the score seed
    assert not any(torch.equal(wa[k], wc[k]) for k in wa)
    sa, sb, sc = (supermask.score_parameters(m) for m in (a, b, c))
    assert all(torch.equal(x, z) for x, z in zip(sa, sc))  # same scores, whatever the weight seed
    assert not any(torch.equal(x, y) for x, y in zip(sa, sb))


def test_a_layers_values_do_not_depend_on_the_other_layers():
    full = supermask.convert(TinyTorchvisionLike(), weight_seed=3, score_seed=4)
    partial = supermask.convert(TinyTorchvisionLike(), weight_seed=3, score_seed=4, skip=["first"])
    assert torch.equal(random_weight(full.fc), random_weight(partial.fc))
    assert torch.equal(supermask.masks(full)["fc"], supermask.masks(partial)["fc"])


def _layer(shape, **kw):
    model = supermask.convert(nn.Sequential(nn.Linear(shape[1], shape[0], bias=False)), **kw)
    return random_weight(model[0]), supermask.score_parameters(model)[0].detach()


def test_signed_constant_init():
    w, _ = _layer((400, 300), method="edge-popup", prune_rate=0.5)
    c = math.sqrt(2 / 300)
    assert torch.allclose(w.abs(), torch.full_like(w, c))
    assert abs((w > 0).float().mean().item() - 0.5) < 0.01
    w, _ = _layer((400, 300), method="edge-popup", prune_rate=0.75, scale_fan=True)
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / (0.25 * 300))))


@pytest.mark.parametrize("kind", ["kaiming-normal", "kaiming-uniform"])
@pytest.mark.parametrize("scale_fan", [False, True])
def test_kaiming_init_statistics(kind, scale_fan):
    w, _ = _layer((500, 400), method="biprop", prune_rate=0.9, weight_init=kind, scale_fan=scale_fan)
    fan = 400 * (0.1 if scale_fan else 1.0)
    std = math.sqrt(2 / fan)
    assert abs(w.mean().item()) < 0.01 * std
    assert abs(w.std().item() / std - 1) < 0.01  # 200,000 draws: the relative error of the std is ~0.2%
    if kind == "kaiming-uniform":
        assert w.abs().max().item() <= math.sqrt(3) * std


def test_score_init_is_pytorchs_default_layer_init():
    _, s = _layer((500, 400), method="edge-popup")
    bound = 1 / math.sqrt(400)
    assert s.abs().max().item() <= bound
    assert abs(s.std().item() / (bound / math.sqrt(3)) - 1) < 0.01


def test_dense_method_reinitialises_and_trains_everything():
    model = supermask.convert(TinyTorchvisionLike(), "dense", weight_seed=5)
    assert supermask.masks(model) == {}
    assert all(p.requires_grad for p in model.parameters())
    assert abs(model.layer1[0].conv2.weight.std().item() / math.sqrt(2 / 72) - 1) < 0.1


def test_keep_uses_the_models_own_weights():
    model = TinyTorchvisionLike()
    before = model.fc.weight.detach().clone()
    supermask.convert(model, "edge-popup", 0.5, weight_init="keep")
    assert torch.equal(random_weight(model.fc), before)


def test_bake_gives_a_plain_model_with_the_same_outputs():
    model = supermask.convert(TinyTorchvisionLike(), "biprop", 0.6).eval()
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        expected = model(x)
    supermask.bake(model)
    assert not list(supermask.masked_layers(model))
    assert all("parametrizations" not in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_bake_of_a_copy_leaves_the_original_working():
    import copy

    model = supermask.convert(TinyTorchvisionLike(), "edge-popup", 0.5).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        expected = model(x)
        baked = supermask.bake(copy.deepcopy(model))
        assert type(baked.conv1) is nn.Conv2d
        assert torch.equal(baked(x), expected)
        assert torch.equal(model(x), expected)  # the original keeps its parametrizations
    assert len(list(supermask.masked_layers(model))) == 6


@pytest.mark.parametrize("by, fan_scale", [("kept", 0.1), ("pruned", 0.9)])
def test_scaled_fan_multiplies_fan_in_by_the_kept_or_the_pruned_fraction(by, fan_scale):
    model = supermask.convert(nn.Sequential(nn.Linear(10, 4, bias=False)), "edge-popup", 0.9, scale_fan=True,
                              scale_fan_by=by)
    # signed constant: |w| = sqrt(2 / (s * fan_in)) with fan_in 10: sqrt(2) when s = 0.1, sqrt(2 / 9) when s = 0.9
    expected = math.sqrt(2 / (fan_scale * 10))
    w = supermask.random_weight(model[0])
    assert torch.allclose(w.abs(), torch.full_like(w, expected))
    with pytest.raises(supermask.ConfigError, match="scale_fan_by"):
        supermask.convert(nn.Sequential(nn.Linear(10, 4)), "biprop", 0.0, scale_fan_by="pruned")
    with pytest.raises(supermask.ConfigError, match="scale_fan_by 'removed'"):
        supermask.convert(nn.Sequential(nn.Linear(10, 4)), "biprop", 0.5, scale_fan_by="removed")
