"""The per-layer top-k mask and its straight-through gradient.

A layer of n weights with prune rate p (the fraction REMOVED) prunes exactly floor(p * n) weights and keeps
the n - floor(p * n) with the largest score magnitude. Ties at the threshold keep the lowest flat indices, so a
mask is a pure function of the scores. `count="published"` prunes what the published code's float arithmetic gives
instead, one weight fewer in some layers at 10, 20 and 70% pruned (docs/fidelity.md D7).
"""

from __future__ import annotations

import math
from decimal import Decimal

import torch
from torch import Tensor


PRUNED_COUNTS = ("exact", "published", "percentile")


def num_pruned(numel: int, prune_rate: float, count: str = "exact") -> int:
    """floor(prune_rate * numel), computed on the decimal the user wrote (0.29 * 100 is 29, not 28); or, with
    `count="published"`, int((1 - k) * numel) in floats, k = 1 - prune_rate being the kept fraction the published
    command lines give (hidden-networks, biprop, IWR `GetSubnet`): 1 - 0.8 is 0.19999999999999996 there, so a
    layer of 2,560 prunes 511; or, with `count="percentile"`, round(p (numel - 1)) as IteRand's `percentile` computes
    it in floats (Python's round: halves to even), the scores below its k-th smallest, k = 1 + that."""
    if count == "exact":
        return math.floor(Decimal(repr(float(prune_rate))) * numel)
    if count == "percentile":
        return round(0.01 * float(prune_rate * 100) * (numel - 1))
    if count != "published":
        raise ValueError(f"unknown pruned count {count!r}: expected one of {', '.join(PRUNED_COUNTS)}")
    kept = float(Decimal(1) - Decimal(repr(float(prune_rate))))
    return int((1.0 - kept) * numel)


def kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor, as a 0-d tensor.

    On the CPU a full kthvalue over millions of scores costs as much as several passes over them, so large
    tensors first bracket the answer with two quantiles of a strided sample and select exactly inside the
    (small) bracket; a bracket that misses falls back to the full selection, so the result is always exact.
    """
    n = flat.numel()
    if flat.device.type != "cpu" or n < _BRACKET_MIN:
        return flat.kthvalue(k).values
    sample = flat[:: n // _SAMPLE]
    m = sample.numel()
    q = k / n
    margin = 6.0 * math.sqrt(m * q * (1.0 - q)) + 8  # six standard deviations of a sample rank
    lo = sample.kthvalue(max(1, int(q * m - margin))).values
    hi = sample.kthvalue(min(m, int(q * m + margin) + 1)).values
    below = int(torch.count_nonzero(flat < lo))
    band = flat[(flat >= lo) & (flat <= hi)]
    rank = k - below
    if 1 <= rank <= band.numel():
        return band.kthvalue(rank).values
    return flat.kthvalue(k).values


_BRACKET_MIN = 1 << 16
_SAMPLE = 1 << 14


def topk_mask(magnitudes: Tensor, prune_rate: float, count: str = "exact") -> Tensor:
    """Boolean mask of the same shape (and memory layout) keeping the largest entries of `magnitudes`.

    Uses selection, never a full sort, so it is cheap enough to run on every training step.
    """
    return topk_masks(magnitudes.unsqueeze(0), prune_rate, count)[0]


def topk_masks(magnitudes: Tensor, prune_rate: float, count: str = "exact") -> Tensor:
    """`topk_mask` of each row of a stack (N, *shape): the masks of N runs' layers in one selection, with the
    same threshold and tie rule, so each row equals `topk_mask` of that row alone."""
    magnitudes = magnitudes.detach()
    flat = magnitudes.reshape(magnitudes.shape[0], -1)
    n = flat.shape[1]
    n_prune = num_pruned(n, prune_rate, count)
    if n_prune == 0:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    if flat.device.type == "cpu" and n >= _BRACKET_MIN:
        threshold = torch.stack([kth_smallest(row, n_prune) for row in flat])  # the largest pruned magnitudes
    else:
        threshold = flat.kthvalue(n_prune, dim=1).values
    # in the magnitudes' own memory layout (a channels-last layer's mask stays channels-last)
    above = magnitudes > threshold.view((-1,) + (1,) * (magnitudes.dim() - 1))
    # entries equal to the threshold still kept; one count per row (a reduction over dims is 20x slower on CPUs)
    room = (n - n_prune) - torch.stack([torch.count_nonzero(row) for row in above])
    if flat.device.type == "cpu" and not room.any():  # no tie straddles a threshold (the usual case)
        return above
    at = flat == threshold[:, None]
    keep = above.reshape(len(flat), -1) | (at & (at.cumsum(1) <= room[:, None]))  # ties in logical (row-major) order
    return above.copy_(keep.view(magnitudes.shape))


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


def scored_mask(scores: Tensor, prune_rate: float, members: bool = False, count: str = "exact") -> Tensor:
    """The top-k mask of |scores| as a float tensor; with autograd on, its gradient reaches the scores through |.|
    (straight-through: dL/dS = dL/dM * sign(S)). With `members`, `scores` is a stack (N, *shape) of N runs' layers,
    each masked on its own. Every method's layer and every stack of runs trained together computes its mask here."""
    magnitudes = scores.abs()
    hard = (topk_masks if members else topk_mask)(magnitudes.detach(), prune_rate, count)
    return straight_through(magnitudes, hard) if torch.is_grad_enabled() else hard.to(scores.dtype)


def global_topk_masks(magnitudes: list[Tensor], prune_rate: float) -> list[Tensor]:
    """Masks of several tensors that keep, together, the largest entries of all of them: of their n entries in
    all, exactly n - floor(p n), whatever each tensor's share (ties: the earlier tensor, then the lower flat index)."""
    flat = torch.cat([m.detach().reshape(-1) for m in magnitudes])
    keep = topk_mask(flat, prune_rate)
    return [part.view(m.shape) for part, m in zip(keep.split([m.numel() for m in magnitudes]), magnitudes)]
