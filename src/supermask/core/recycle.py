"""Iterative Weight Recycling (IWR, Gorbett & Whitley 2023): copy the values of each masked layer's
highest-scored weights onto its lowest-scored positions.

In each masked layer of n weights, with r the fraction of ALL the layer's weights:

    idx = argsort(|S|)                    # ascending score; weight magnitudes play no part
    k   = floor(r * n)
    W[idx[:k]] = W[idx[-k:]]              # lowest-scored position <- k-th highest, ..., k-th lowest <- highest

Scores and optimizer state are untouched. The ablation ("effect of random weights") copies from the ranks
[k, 2k) counted from the bottom instead. Recycled values are copies of values already in the layer, so the
network stays reconstructible from its seed, the recycle steps and the final mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supermask.core.convert import masked_layers, random_weight
from supermask.core.mask import num_pruned
from supermask.errors import ConfigError


def recycle_indices(scores: Tensor, rate: float, *, ablation: bool = False) -> tuple[Tensor, Tensor]:
    """(destination, source) flat indices of one recycle step, paired in order.

    Ties in |score| rank the lower flat index higher, as in the mask, so a step is a pure function of the scores.
    """
    if not 0.0 <= rate <= 0.5:
        raise ConfigError(f"recycle rate {rate!r} is outside [0, 0.5]: it is the fraction of a layer's weights overwritten")
    n = num_pruned(scores.numel(), rate)
    order = torch.sort(scores.detach().abs().reshape(-1), descending=True, stable=True).indices.flip(0)
    source = order[n : 2 * n] if ablation else order[order.numel() - n :]
    return order[:n], source


@torch.no_grad()
def recycle_layer_(weight: Tensor, scores: Tensor, rate: float, *, ablation: bool = False) -> int:
    """One IWR step on one layer's weight, in place; returns how many weights changed value."""
    dest, source = recycle_indices(scores, rate, ablation=ablation)
    flat = weight.flatten().clone()  # logical (row-major) order, whatever the weight's memory layout
    new = flat[source]
    changed = int((flat[dest] != new).sum())
    flat[dest] = new
    weight.copy_(flat.view(weight.shape))
    return changed


def recycle_(model: nn.Module, rate: float, ablation: bool = False) -> dict[str, int]:
    """One IWR step on every masked weight of `model`; returns {key (see `masked_layers`): weights changed}."""
    layers = list(masked_layers(model))
    if not layers:
        raise ConfigError("recycle_ needs a model converted with a mask method (edge-popup or biprop)")
    return {name: recycle_layer_(random_weight(layer, p), p.scores, rate, ablation=ablation) for name, layer, p in layers}
