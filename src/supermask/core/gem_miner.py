"""Gem-Miner (Sreenivasan et al., "Rare Gems: Finding Lottery Tickets at Initialization", NeurIPS 2022; published
code ksreenivasan/pruning_is_enough, `algo: hc_iter`), as a registered mask method.

- Scores p, one per weight, start at U[0, 1]; the frozen weights are the signed constant (non-affine BatchNorm, no
  biases in its recipe).
- The mask is M = 1[p > 0.5] * flag, a threshold, not a top-k: `flag` marks the weights not yet pruned for good.
  The gradient goes straight through to p, times the flag and without |.|: dL/dp = dL/dW_eff * W * flag.
- After every optimizer step p is clamped to [0, 1]; the loss adds lambda * sum(p^2) over every score.
- After the 0-based epochs T, 2T, ..., N T (N = floor((E - 1) / T) rounds), a round prunes for good the active
  weights with the lowest p, over all masked layers at once, so that the flag keeps d^(i/N) of them after round i
  (d = 1 - prune_rate, the target density).

How many a round prunes (`gem_rounding`):
- "exact" (the default): round i keeps round(n d^(i/N)) of the n weights, the last exactly n - floor(p n), ties
  broken as every supermask mask is (the lower flat index, the earlier layer). The flag lands exactly on d.
- "published": the published `prune`: ceil(r n_active) with r = 1 - d^(1/N), every active score at or below the
  threshold pruned (ties prune more); on ResNet-20 it ends a few weights below d (docs/fidelity.md).
The mask a network computes with, 1[p > 0.5] * flag, may keep fewer than the flag: `summary.json` reports its own
density (`params_kept`, `layer_density`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from supermask.core.init import generator
from supermask.core.mask import num_pruned
from supermask.core.methods import Method, ScoredWeight, register

THRESHOLD = 0.5  # the published `quantize_threshold`
ROUNDINGS = ("exact", "published")


class GemMiner(ScoredWeight):
    """W_eff = W * 1[p > 0.5] * flag, straight-through to p times the flag."""

    def __init__(self, scores: Tensor, prune_rate: float):
        super().__init__(scores, prune_rate)
        self.register_buffer("flag", torch.ones_like(scores, dtype=torch.bool))  # in the checkpoint: a resume keeps it

    def mask(self) -> Tensor:
        return (self.scores.detach() > THRESHOLD) & self.flag

    def forward(self, weight: Tensor) -> Tensor:
        hard = ((self.scores > THRESHOLD) & self.flag).to(weight.dtype)
        if torch.is_grad_enabled():
            # the value of `hard`; the gradient of p * flag (the published GetSubnet returns g unchanged, and the
            # flag multiplies outside it)
            hard = hard + (self.scores - self.scores.detach()) * self.flag
        return self.effective_weight(weight, hard)

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return weight


def draw_unit_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:  # noqa: ARG001
    """p ~ U[0, 1] per weight, from the score seed's stream for the layer."""
    return torch.rand(shape, generator=generator(seed, f"scores/{name}"))


def _layers(model: nn.Module) -> list[tuple[str, GemMiner]]:
    from supermask.core.convert import masked_layers  # convert imports the methods

    return [(name, p) for name, _, p in masked_layers(model) if isinstance(p, GemMiner)]


def clamp_scores(model: nn.Module, cfg, *, epoch: int, step: int) -> list[dict]:  # noqa: ARG001
    """After every optimizer step: p into [0, 1] (the published code clamps before each forward: the same)."""
    with torch.no_grad():
        for _, p in _layers(model):
            p.scores.clamp_(0.0, 1.0)
    return []


def regularizer(model: nn.Module, cfg) -> Tensor:
    """lambda * sum(p^2) over every score of every masked layer (pruned ones too), unnormalized, as published."""
    return cfg.gem_lambda * sum(p.scores.square().sum() for _, p in _layers(model))


def rounds(epochs: int, period: int) -> int:
    """N = floor((E - 1) / T): the rounds that fit before the last epoch."""
    return (epochs - 1) // period


def round_of(epoch: int, epochs: int, period: int) -> int | None:
    """The round (1 to N) that prunes after 0-based `epoch`, or None: epochs T, 2T, ..., N T."""
    if epoch == 0 or epoch % period or epoch // period > rounds(epochs, period):
        return None
    return epoch // period


def kept_after(i: int, n: int, n_rounds: int, prune_rate: float) -> int:
    """How many of the n weights the flag keeps after round i of N ("exact"): round(n d^(i/N)), and after the last
    exactly n - floor(p n), the count every supermask mask keeps."""
    if i == n_rounds:
        return n - num_pruned(n, prune_rate)
    return min(n, round(n * (1.0 - prune_rate) ** (i / n_rounds)))


def prune_round(model: nn.Module, cfg, *, epoch: int, step: int) -> list[dict]:
    """At an epoch's end: the round due then, if any, pruning for good over all masked layers together; a record
    per layer with the weights it pruned."""
    i = round_of(epoch, cfg.epochs, cfg.gem_period)
    layers = _layers(model)
    if i is None or not layers:
        return []
    flags = [p.flag for _, p in layers]
    scores = torch.cat([p.scores.detach().reshape(-1) for _, p in layers])
    active = torch.cat([f.reshape(-1) for f in flags])
    n, n_rounds = active.numel(), rounds(cfg.epochs, cfg.gem_period)
    if cfg.gem_rounding == "exact":
        keep = kept_from(scores, active, kept_after(i, n, n_rounds, layers[0][1].prune_rate))
    else:
        keep = published_keep(scores, active, 1.0 - (1.0 - layers[0][1].prune_rate) ** (1.0 / n_rounds))
    records = []
    for (name, p), part in zip(layers, keep.split([f.numel() for f in flags])):
        part = part.view(p.flag.shape)
        pruned = int((p.flag & ~part).sum())
        p.flag.copy_(p.flag & part)
        records.append({"kind": "gem-prune", "epoch": epoch + 1, "step": step, "layer": name, "changed": pruned})
    return records


def kept_from(scores: Tensor, active: Tensor, k: int) -> Tensor:
    """The k active entries with the largest scores (ties: the lower index), or every active one if fewer."""
    k = min(k, int(active.sum()))
    ranked = torch.where(active, scores, torch.full_like(scores, -math.inf))
    # a stable sort, descending: equal scores keep their index order, so ties go to the lower index
    order = torch.sort(ranked, descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(active)
    keep[order] = True
    return keep


def published_keep(scores: Tensor, active: Tensor, rate: float) -> Tensor:
    """The published round (`prune`, BottomK): t = the ceil(rate n_active)-th smallest active score; keep the
    active ones strictly above t."""
    values = scores[active]
    n_prune = math.ceil(rate * values.numel())
    if n_prune == 0:
        return active.clone()
    threshold = torch.sort(values).values[n_prune - 1]
    return active & (scores > threshold)


def unflag_(model: nn.Module) -> list[nn.Parameter]:
    """The paper's second stage starts here (`finetune` with `unflag_before_finetune`): every score set to 1, so the
    mask becomes the flag (every weight the rounds kept), the scores frozen, and the masked weights made trainable;
    returns the weights to train."""
    from supermask.core.convert import masked_layers, random_weight  # convert imports the methods

    weights = []
    for _, layer, p in masked_layers(model):
        if isinstance(p, GemMiner):
            p.scores.data.fill_(1.0)
            p.scores.requires_grad_(False)
        weights.append(random_weight(layer, p).requires_grad_(True))
    return weights


register(Method("gem-miner", GemMiner, weight_init="signed-constant", scale_fan=False, score_init=draw_unit_scores,
                after_step=clamp_scores, end_of_epoch=prune_round, loss_term=regularizer, finetune_start=unflag_,
                exact_count=False,
                stacks=False,
                summary="Sreenivasan et al. 2022: thresholded scores in [0, 1], L2-regularized, pruned for good in "
                        "global rounds to the target density"))
