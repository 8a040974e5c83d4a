"""The threshold mask of SupSup's permuted-MNIST experiments (`FastMultitaskMaskConv` and `GetSubnetFast` in
RAIVNLab/supsup, after Mallya et al.'s Piggyback), as a registered mask method.

- M = 1[S >= 0]: a weight is kept where its score is not negative. There is no top-k, so the density is an outcome
  of training (about half at the start, the scores being drawn symmetric about 0); `prune_rate` does not set it, and
  `summary.json` reports what was kept.
- W_eff = W * M, with an identity straight-through gradient: dL/dS = dL/dW_eff * W (no |.|, no sign(S)).
- The weights and scores are Edge-Popup's: signed constants, scores U(+-1/sqrt(fan_in)) (the published `mask_init`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from supermask.core.methods import Method, ScoredWeight, register


class ThresholdMask(ScoredWeight):
    """W_eff = W * 1[S >= 0]."""

    def mask(self) -> Tensor:
        return self.scores.detach() >= 0

    def forward(self, weight: Tensor) -> Tensor:
        hard = self.mask().to(weight.dtype)
        if torch.is_grad_enabled():
            hard = hard + (self.scores - self.scores.detach())  # the value 1[S >= 0]; the gradient to S unchanged
        return self.effective_weight(weight, hard)

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return weight

    def extra_repr(self) -> str:
        return "threshold=0"


register(Method("threshold", ThresholdMask, weight_init="signed-constant", scale_fan=False, exact_count=False,
                stacks=False, summary="SupSup's permuted-MNIST mask: keep a weight where its score is >= 0 "
                                      "(straight-through, density free)"))
