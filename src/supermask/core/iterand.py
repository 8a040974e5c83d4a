"""IteRand (Chijiwa et al. 2021): re-draw a random fraction of each layer's PRUNED weights from the layer's
init distribution, so the search can recover from unlucky random values.

    W <- W * M + (1 - M) * [(1 - b) * W + b * W_new],    b ~ Bernoulli(r), W_new ~ the layer's init

Every value is drawn from a CPU generator seeded by (seed, layer name), so a step is reproducible from the
run's seeds and identical on every device. `redraw="zero"` sets the chosen weights to 0 instead: what one version of
the IWR paper's code does (its signed constant of `zeros_like` is sign(0) = 0; docs/fidelity.md D10).
"""

from __future__ import annotations

import torch
from torch import nn

from supermask.core.convert import masked_layers, random_weight
from supermask.core.init import draw_weight, generator
from supermask.errors import ConfigError

ITERAND_REDRAWS = ("init", "zero")  # a fresh draw from the layer's init (IteRand's rule), or 0


@torch.no_grad()
def rerandomize_(model: nn.Module, rate: float, seed: int, redraw: str = "init") -> dict[str, int]:
    """One IteRand step on every masked weight; returns {key (see `masked_layers`): weights redrawn}. Kept weights
    never change."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"rerandomize rate {rate!r} is outside [0, 1]")
    if redraw not in ITERAND_REDRAWS:
        raise ConfigError(f"unknown iterand_redraw {redraw!r}: expected one of {', '.join(ITERAND_REDRAWS)}")
    layers = list(masked_layers(model))
    if not layers:
        raise ConfigError("rerandomize_ needs a model converted with a mask method (edge-popup or biprop)")
    changed = {}
    for name, layer, p in layers:
        if p.weight_init is None:
            raise ConfigError(f"layer {name} kept its own weights (weight_init=keep): IteRand has no init to redraw from")
        kind, keep_fraction = p.weight_init
        fan, gain = p.init_fan  # the layer's own fan-in (see convert)
        weight = random_weight(layer, p)
        coin = torch.rand(weight.shape, generator=generator(seed, f"iterand-coin/{name}")) < rate
        chosen = (coin.to(weight.device) & ~p.mask())
        fresh = (torch.zeros(weight.shape) if redraw == "zero" else
                 draw_weight(weight.shape, kind, seed=seed, name=f"iterand/{name}", keep_fraction=keep_fraction,
                             fan=fan, gain=gain))
        weight.copy_(torch.where(chosen, fresh.to(device=weight.device, dtype=weight.dtype), weight))
        changed[name] = int(chosen.sum())
    return changed
