"""Signed supermasks (Koster, Grothe & Rettinger, "Signing the Supermask: Keep, Hide, Invert", ICLR 2022; published
code kosnil/signed_supermasks, TensorFlow), as a registered mask method.

- Each weight has a real score m, drawn U(+-sqrt(2) / sqrt(fan_in + fan_out)) (the published "xavier" mask init).
- The mask keeps, hides or inverts: M = +1 where m > tau, -1 where m < -tau, 0 otherwise (strict), with the layer's
  threshold tau = `signed_threshold` * max |m| at init, computed once and frozen (`update_tanh_th`, called only
  after initialization; 0.4 in the published configs).
- W_eff = W * M, with an identity straight-through gradient: dL/dm = dL/dW_eff * W (no |.|, no sign(m)).
- There is no top-k: the density is an outcome, driven by decoupled weight decay of the scores
  (`weight_decay_mode=decoupled`); `prune_rate` does not set it, and `summary.json` reports what was kept.
- The weights are the ELUS signed constant (`weight_init=elus`) for the ELU networks (`conv4-elu`, ...).

A `.smask` stores |M| as the layer's mask and the inverted weights (M = -1) as a second bit mask over the kept
ones (`SignedSupermask.levels`, read back by `level_value`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from supermask.core.init import generator
from supermask.core.methods import Method, ScoredWeight, register


class SignedSupermask(ScoredWeight):
    """W_eff = W * M, M in {-1, 0, +1} by a fixed threshold on the scores."""

    def __init__(self, scores: Tensor, prune_rate: float, threshold: float = 0.4):
        super().__init__(scores, prune_rate)
        # in the checkpoint, as the published layer keeps it; a .smask does not need it (it stores M)
        self.register_buffer("tau", scores.detach().abs().amax() * float(threshold))

    def signs(self) -> Tensor:
        """M: +1 above tau, -1 below -tau, 0 between (both strict)."""
        m = self.scores.detach()
        return (m > self.tau).to(m.dtype) - (m < -self.tau).to(m.dtype)

    def mask(self) -> Tensor:
        """The weights kept, inverted or not: |M| = 1."""
        return self.scores.detach().abs() > self.tau

    def forward(self, weight: Tensor) -> Tensor:
        hard = self.signs().to(weight.dtype)
        if torch.is_grad_enabled():
            hard = hard + (self.scores - self.scores.detach())  # the value M; the gradient to m unchanged
        return self.effective_weight(weight, hard)

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return weight

    def levels(self) -> list[Tensor]:
        """What a `.smask` stores: |M| (the mask), then the inverted weights among them."""
        return [self.mask(), self.signs() < 0]

    def level_sizes(self, n: int) -> list[int | None]:
        return [None]  # any number of the kept weights may be inverted

    @staticmethod
    def level_value(stored: list[Tensor]) -> Tensor:
        """M from the stored masks: +1 kept, -1 inverted, 0 pruned."""
        kept, inverted = stored
        return kept.float() - 2 * inverted.float()

    def extra_repr(self) -> str:
        return f"tau={float(self.tau):.4g}"


def draw_xavier_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:  # noqa: ARG001
    """m ~ U(+-sqrt(2) / sqrt(fan_in + fan_out)): the published mask init (`initialize_weights("uniform", -7)`)."""
    receptive = math.prod(shape[2:])
    bound = math.sqrt(2.0) / math.sqrt(shape[1] * receptive + shape[0] * receptive)
    return torch.rand(shape, generator=generator(seed, f"scores/{name}")).mul_(2 * bound).sub_(bound)


register(Method("signed-supermask", SignedSupermask, weight_init="elus", scale_fan=False,
                score_init=draw_xavier_scores, options={"threshold": "signed_threshold"}, exact_count=False,
                stacks=False,
                summary="Koster et al. 2022: keep, hide or invert each weight by a fixed threshold on its score"))
