"""Per-layer densities: one prune rate for every masked tensor (`uniform`), or SupSup's Erdős–Rényi budget (`er`).

SupSup's split-CIFAR setup (`er_sparsity`, RAIVNLab/supsup `main.py`) keeps in a layer of shape (c_out, c_in, ...)
the fraction k_l = min(0.5, s * (c_in + c_out) / n_l) of its n_l weights: large layers keep less, small ones more, none
more than half. The published s is a free knob; here s is solved for, so that the masked tensors keep together the
fraction 1 - prune_rate of their weights (the density the rest of supermask names by `prune_rate`), which the cap
allows for prune_rate >= 0.5. Each layer then prunes floor(p_l n_l) with p_l = 1 - k_l, so the total kept is the
target within one weight a layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from supermask.errors import ConfigError

LAYER_DENSITIES = ("uniform", "er")
ER_CAP = 0.5  # SupSup keeps at most half of a layer


def er_ratio(shape: Sequence[int]) -> float:
    """(c_in + c_out) / n of a weight of shape (c_out, c_in, ...): the Erdős–Rényi density per unit of s."""
    return (shape[0] + shape[1]) / math.prod(shape) if len(shape) >= 2 else 1.0


def er_prune_rates(shapes: Mapping[str, Sequence[int]], prune_rate: float) -> dict[str, float]:
    """Each tensor's prune rate under the Erdős–Rényi budget whose total density is 1 - prune_rate."""
    target = 1.0 - float(prune_rate)
    if target > ER_CAP:
        raise ConfigError(f"layer_density=er keeps at most half of each layer (SupSup's cap): prune_rate={prune_rate} "
                          "asks for more; choose prune_rate >= 0.5")
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    ratios = {k: er_ratio(s) for k, s in shapes.items()}
    total = sum(sizes.values())

    def density(s: float) -> float:
        return sum(min(ER_CAP, s * ratios[k]) * sizes[k] for k in shapes) / total

    low, high = 0.0, ER_CAP / min(ratios.values())  # at `high` every layer is capped: density 0.5 >= target
    for _ in range(200):  # bisection to float precision: the same s on every machine
        mid = (low + high) / 2
        if density(mid) < target:
            low = mid
        else:
            high = mid
    return {k: 1.0 - min(ER_CAP, high * ratios[k]) for k in shapes}
