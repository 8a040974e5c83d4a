"""Turn the Conv and Linear layers of any PyTorch model into masked layers, and read their masks back."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError
from .init import WEIGHT_INITS, draw_scores, draw_weight
from .methods import METHODS, PARAMETRIZATIONS, ScoredWeight

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DEFAULT_WEIGHT_INIT = {"edge-popup": "signed-constant", "biprop": "kaiming-normal", "dense": "kaiming-normal"}
DEFAULT_SCALE_FAN = {"edge-popup": False, "biprop": True, "dense": False}


def eligible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv/Linear layers of `model` in module order, by qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def _select_skipped(names: list[str], skip: Iterable[str]) -> set[str]:
    skipped: set[str] = set()
    for pattern in skip:
        if pattern == "first":
            skipped.update(names[:1])
        elif pattern == "last":
            skipped.update(names[-1:])
        else:
            hits = fnmatch.filter(names, pattern)
            if not hits:
                raise ConfigError(f"skip pattern {pattern!r} matches no Conv/Linear layer; layers are: {', '.join(names)}")
            skipped.update(hits)
    return skipped


def convert(
    model: nn.Module,
    method: str = "edge-popup",
    prune_rate: float = 0.5,
    *,
    weight_init: str | None = None,
    scale_fan: bool | None = None,
    weight_seed: int = 0,
    score_seed: int = 0,
    skip: Iterable[str] = (),
) -> nn.Module:
    """Make `model` a subnetwork search over its random weights, in place, and return it.

    Every Conv1d/2d/3d and Linear layer gets fresh random weights from `weight_seed` (unless
    `weight_init="keep"`, which keeps the model's current weights, e.g. pretrained ones). For the mask methods
    each such layer gets trainable scores from `score_seed` and its `weight` becomes the method's effective
    weight; every other parameter (biases, BatchNorm affine, skipped layers) is frozen, since only scores are
    searched. `skip` names layers to leave dense: qualified names, glob patterns, or "first"/"last".
    For `method="dense"` the layers are only re-initialised and everything stays trainable.

    The defaults follow the papers: Edge-Popup uses the signed Kaiming constant, Biprop Kaiming normal with the
    fan scaled by the keep fraction, dense Kaiming normal.
    """
    skip = [skip] if isinstance(skip, str) else skip  # one pattern, not its characters
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    if not 0.0 <= float(prune_rate) < 1.0:
        raise ConfigError(f"prune_rate {prune_rate!r} is outside [0, 1): it is the fraction of weights removed")
    weight_init = weight_init or DEFAULT_WEIGHT_INIT[method]
    if weight_init not in WEIGHT_INITS + ("keep",):
        raise ConfigError(f"unknown weight_init {weight_init!r}: expected one of {', '.join(WEIGHT_INITS + ('keep',))}")
    if scale_fan is None:
        scale_fan = DEFAULT_SCALE_FAN[method]
    layers = eligible_layers(model)
    if any(parametrize.is_parametrized(m, "weight") for _, m in layers):
        raise ConfigError("model is already converted (a layer's weight is parametrized)")
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv or Linear layer to convert")
    skipped = _select_skipped([n for n, _ in layers], skip)
    masked = method != "dense"
    keep_fraction = 1.0 - float(prune_rate) if (scale_fan and masked) else 1.0

    if masked:
        model.requires_grad_(False)
    for name, layer in layers:
        w = layer.weight
        with torch.no_grad():
            if weight_init != "keep":
                lk = 1.0 if name in skipped else keep_fraction
                w.copy_(draw_weight(w.shape, weight_init, seed=weight_seed, name=name, keep_fraction=lk))
        if not masked or name in skipped:
            continue
        scores = draw_scores(w.shape, seed=score_seed, name=name).to(device=w.device, dtype=w.dtype)
        scored = PARAMETRIZATIONS[method](scores, prune_rate)
        # IteRand redraws pruned weights from the layer's own init distribution.
        scored.weight_init = None if weight_init == "keep" else (weight_init, keep_fraction)
        parametrize.register_parametrization(layer, "weight", scored)
        layer.parametrizations.weight.original.requires_grad_(False)
    return model


def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, ScoredWeight]]:
    """(qualified name, layer, its scored-weight parametrization) for every masked layer."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ScoredWeight):
                    yield name, module, p


def masks(model: nn.Module) -> dict[str, Tensor]:
    """The current masks, {qualified layer name: bool tensor shaped like the layer's weight}."""
    return {name: p.mask().detach().clone() for name, _, p in masked_layers(model)}


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p.scores for _, _, p in masked_layers(model)]


def random_weight(layer: nn.Module) -> Tensor:
    """The frozen random weight underneath a masked layer's effective weight."""
    return layer.parametrizations.weight.original


def bake(model: nn.Module) -> nn.Module:
    """Replace every masked layer's parametrization by its current effective weight, in place: a plain model
    for deployment, with frozen weights."""
    for _, module, _ in list(masked_layers(model)):
        with torch.no_grad():
            weight = module.weight.detach().clone()
        # parametrize gives each layer a generated subclass, which copy.deepcopy shares between copies; its own
        # remove_parametrizations edits that class and would break the other copies, so undo it per instance.
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        module.weight = nn.Parameter(weight, requires_grad=False)
    return model
