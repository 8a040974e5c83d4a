"""The per-layer top-k mask and its straight-through gradient.

A layer of n weights with prune rate p (the fraction REMOVED) prunes exactly floor(p * n) weights and keeps
the n - floor(p * n) with the largest score magnitude. Ties at the threshold keep the lowest flat indices, so a
mask is a pure function of the scores.
"""

from __future__ import annotations

import math
from decimal import Decimal

import torch
from torch import Tensor


def num_pruned(numel: int, prune_rate: float) -> int:
    """floor(prune_rate * numel), computed on the decimal the user wrote (0.29 * 100 is 29, not 28)."""
    return math.floor(Decimal(repr(float(prune_rate))) * numel)


def topk_mask(magnitudes: Tensor, prune_rate: float) -> Tensor:
    """Boolean mask of the same shape keeping the largest entries of `magnitudes`.

    Uses selection (kthvalue) instead of a full sort, and no host synchronisation, so it is cheap enough to
    run on every training step.
    """
    flat = magnitudes.detach().reshape(-1)
    n = flat.numel()
    n_prune = num_pruned(n, prune_rate)
    if n_prune == 0:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    threshold = flat.kthvalue(n_prune).values  # the largest pruned magnitude
    above = flat > threshold
    at = flat == threshold
    room = (n - n_prune) - above.sum()  # how many entries equal to the threshold are still kept
    keep = above | (at & (at.cumsum(0) <= room))
    return keep.view_as(magnitudes)


class _StraightThrough(torch.autograd.Function):
    """Returns the mask as floats; in backward the mask acts as the identity on its input."""

    @staticmethod
    def forward(ctx, magnitudes: Tensor, mask: Tensor) -> Tensor:  # noqa: ARG004 - ctx is required
        return mask.to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ARG004
        return grad, None


def straight_through(magnitudes: Tensor, mask: Tensor) -> Tensor:
    """`mask` as a float tensor whose gradient flows unchanged into `magnitudes` (the STE of Edge-Popup)."""
    return _StraightThrough.apply(magnitudes, mask)
