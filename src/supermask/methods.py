"""The methods: how a layer's effective weight is computed from its frozen weights and trainable scores.

Each method is a small module used as a `torch.nn.utils.parametrize` parametrization of a layer's `weight`, so
any Conv/Linear layer keeps its type and its place in the model; only `weight` becomes a computed tensor.

- edge-popup: W_eff = W * M
- biprop:     W_eff = alpha * sign(W) * M, alpha = mean |W| over the kept weights (a constant in backward)
- dense:      no parametrization; the weights themselves are trained (the baseline)

M is the top-k mask of |S| (see `supermask.mask`). Gradients reach S through the straight-through estimator:
dL/d|S| = dL/dM, so dL/dS = dL/dM * sign(S) (the sign comes from |.|, as in the published code).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import mask as mask_lib

METHODS = ("edge-popup", "biprop", "dense")
MASK_METHODS = ("edge-popup", "biprop")


class ScoredWeight(nn.Module):
    """Holds a layer's scores and prune rate, and caches the mask while the scores do not change."""

    def __init__(self, scores: Tensor, prune_rate: float):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.prune_rate = float(prune_rate)
        self.weight_init: tuple[str, float] | None = None  # (kind, keep fraction of the fan), set by convert
        self._mask: Tensor | None = None
        self._mask_key: tuple | None = None
        self._weight: Tensor | None = None
        self._weight_key: tuple | None = None

    def _scores_key(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict, recycling) bump a tensor's version counter.
        s = self.scores
        return (s._version, s.data_ptr(), self.prune_rate)

    def mask(self) -> Tensor:
        """The current boolean mask, recomputed only when the scores changed."""
        key = self._scores_key()
        if self._mask_key != key:
            self._mask = mask_lib.topk_mask(self.scores.detach().abs(), self.prune_rate)
            self._mask_key = key
        return self._mask

    def forward(self, weight: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.effective_weight(weight, mask_lib.straight_through(self.scores.abs(), self.mask()))
        # Without autograd (evaluation, inference) the whole effective weight is reused across batches.
        key = (self._scores_key(), weight._version, weight.data_ptr())
        if self._weight_key != key:
            self._weight = self.effective_weight(weight, self.mask().to(weight.dtype))
            self._weight_key = key
        return self._weight

    def effective_weight(self, weight: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"prune_rate={self.prune_rate}"


class EdgePopup(ScoredWeight):
    """Edge-Popup (Ramanujan et al. 2020): the random weights, masked."""

    def effective_weight(self, weight: Tensor, mask: Tensor) -> Tensor:
        return weight * mask


class Biprop(ScoredWeight):
    """Biprop (Diffenderfer & Kailkhura 2021): signs of the random weights, masked, scaled by alpha."""

    def effective_weight(self, weight: Tensor, mask: Tensor) -> Tensor:
        return biprop_alpha(weight, mask) * weight.sign() * mask


def biprop_alpha(weight: Tensor, mask: Tensor) -> Tensor:
    """||M * W||_1 / ||M||_1: the mean magnitude of the kept weights, as a constant (no gradient)."""
    kept = mask.detach().to(weight.dtype)
    return ((weight.detach().abs() * kept).sum() / kept.sum().clamp_min(1)).detach()


PARAMETRIZATIONS: dict[str, type[ScoredWeight]] = {"edge-popup": EdgePopup, "biprop": Biprop}
