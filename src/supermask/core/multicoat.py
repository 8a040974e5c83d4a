"""Multicoated supermasks (Okoshi et al., ICML 2022; published code yasu0001/multicoated-supermasks), as a
registered mask method.

One score tensor per layer and C coats with increasing prune fractions p_1 < ... < p_C (`multicoat_prune_rates`;
`prune_rate` is p_1). Coat c is the top-(n - floor(p_c n)) of |S|, so the coats are nested, and a weight's
multiplicity m is the number of coats holding it, 0 to C. The effective weight is W * m, with W the signed constant
whose fan is scaled by coat 1's keep fraction: sign(W) * sqrt(2 / (fan_in (1 - p_1))) * m. That is the published
code's scaling (`MultiLevelHN.forward`: weight * mask * scale), with no division by C.

The published straight-through estimator sends the whole gradient of the mask sum through every coat
(`GetSubnet.backward` returns g * bw_scale into |S| once per coat), so the score gradient is C times Edge-Popup's:
dL/dS = C * dL/dW_eff * W * sign(S).

Scores start as kaiming_normal(mode=fan_out): N(0, 2 / fan_out) (`score_kaiming_init`).

A `.smask` stores coat 1 as the layer's mask and each further coat as bits over the previous coat's kept weights
(`Multicoat.levels`), near the entropy of the multiplicity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from supermask.core.init import generator
from supermask.core.mask import num_pruned, straight_through, topk_mask
from supermask.core.methods import Method, ScoredWeight, register
from supermask.errors import ConfigError

PUBLISHED_RATES = (0.7, 0.9212, 0.9685)  # their ResNet-50 config (C = 3)
# published: W * m, the code's; mean: W * m / C, the formula the issue gives, an option for networks without
# BatchNorm, where C-fold weights compound layer by layer (Conv-4 at 90% starts with a loss of 326 and never learns)
SCALES = ("published", "mean")


class Multicoat(ScoredWeight):
    """W_eff = W * m, m = the number of coats whose top-k of |S| holds the weight; `rates` are the coats' prune
    fractions, increasing, the first the layer's prune rate."""

    def __init__(self, scores: Tensor, prune_rate: float, rates: tuple[float, ...] | list[float] | None = None,
                 scale: str = "published"):
        super().__init__(scores, prune_rate)
        self.rates = check_rates(prune_rate, rates if rates is not None else (prune_rate,))
        if scale not in SCALES:
            raise ConfigError(f"unknown multicoat_scale {scale!r}: expected one of {', '.join(SCALES)}")
        self.scale = scale

    def coats(self) -> list[Tensor]:
        """Each coat's boolean mask, nested: coat c+1 keeps a subset of coat c."""
        magnitudes = self.scores.detach().abs()
        return [topk_mask(magnitudes, rate) for rate in self.rates]

    def multiplicity(self) -> Tensor:
        return torch.stack(self.coats()).sum(0)

    def forward(self, weight: Tensor) -> Tensor:
        m = self.multiplicity().to(weight.dtype)
        if torch.is_grad_enabled():
            magnitudes = self.scores.abs()
            # the value m; the gradient C times the straight-through one, as each coat passes all of it
            m = m + len(self.rates) * straight_through(magnitudes, torch.zeros_like(m))
        return self.effective_weight(weight, m)

    def combine(self, weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        # "mean": W * m / C, which keeps the largest effective weight at W (networks without BatchNorm)
        return weight * mask / len(self.rates) if self.scale == "mean" else weight * mask

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return weight

    def levels(self) -> list[Tensor]:
        return self.coats()

    def level_sizes(self, n: int) -> list[int | None]:
        return [n - num_pruned(n, rate) for rate in self.rates[1:]]

    def extra_repr(self) -> str:
        return f"prune_rates={list(self.rates)}"


def check_rates(prune_rate: float, rates) -> tuple[float, ...]:
    """The coats' prune fractions: increasing, in [0, 1), the first equal to the layer's prune rate."""
    rates = tuple(float(r) for r in rates)
    if not rates or rates[0] != float(prune_rate):
        raise ConfigError(f"multicoat_prune_rates {list(rates)} must start with prune_rate={prune_rate:g} (coat 1's)")
    if any(not 0 <= r < 1 for r in rates) or any(b <= a for a, b in zip(rates, rates[1:])):
        raise ConfigError(f"multicoat_prune_rates {list(rates)} must increase, each in [0, 1)")
    return rates


def draw_fan_out_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:  # noqa: ARG001
    """kaiming_normal(mode=fan_out, relu): N(0, 2 / fan_out), fan_out = shape[0] * the kernel's size."""
    fan_out = shape[0] * math.prod(shape[2:])
    return torch.randn(shape, generator=generator(seed, f"scores/{name}")).mul_(math.sqrt(2.0 / fan_out))


register(Method("multicoat", Multicoat, weight_init="signed-constant", scale_fan=True, score_init=draw_fan_out_scores,
                options={"rates": "multicoat_prune_rates", "scale": "multicoat_scale"}, stacks=False,
                summary="Okoshi et al. 2022: nested top-k coats of one score tensor; the weight times how many "
                        "coats hold it"))
