"""The methods: how a layer's effective weight is computed from its frozen weights and trainable scores, and the
registry that declares each mask method in one place (`Method`, `register`; docs/adding-a-method.md).

Each method is a small module used as a `torch.nn.utils.parametrize` parametrization of a layer's `weight`, so
any Conv/Linear layer keeps its type and its place in the model; only `weight` becomes a computed tensor.

- edge-popup: W_eff = W * M
- biprop:     W_eff = alpha * sign(W) * M, alpha = mean |W| over the kept weights (a constant in backward)
- dense:      no parametrization; the weights themselves are trained (the baseline)

M is the top-k mask of |S| (see `supermask.core.mask`). Gradients reach S through the straight-through estimator:
dL/d|S| = dL/dM, so dL/dS = dL/dM * sign(S) (the sign comes from |.|, as in the published code).

The score gradient of each method is the published one: for Edge-Popup dL/dS = dL/dW_eff * W * sign(S). Biprop's
published code (`GetQuantnet_binary`, chrundle/biprop) returns alpha * M in forward but sends g * |W| back to |S|,
so its score gradient is Edge-Popup's too, dL/dW_eff * W * sign(S) (`biprop_grad="weight"`, the default).
`biprop_grad="alpha"` instead differentiates alpha * sign(W) * M as written, with alpha constant:
dL/dW_eff * alpha * sign(W) * sign(S), which supermask used before 0.2 (kept as an ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import torch
from torch import Tensor, nn

from supermask.core import mask as mask_lib
from supermask.core.init import RELU_GAIN, draw_scores
from supermask.errors import ConfigError

DENSE = "dense"  # the weight-trained baseline: no parametrization, so no entry in the registry
BIPROP_GRADS = ("weight", "alpha")  # the published score gradient (the default), the ablation
ALPHA_COUNTS = ("exact", "published")  # alpha's denominator: the kept count, or the published code's int(k n)
SCORE_RANKS = ("magnitude", "signed")  # what Edge-Popup's top-k ranks: |S|, or S (IteRand's published code)


class ScoredWeight(nn.Module):
    """Holds a layer's scores and prune rate. Outside autograd it caches the mask and the effective weight for as
    long as the scores and the weight hold the same values."""

    # What the top-k ranks: |S| (Edge-Popup's rule), or S itself ("signed": IteRand's published `GetSubnet`, the
    # largest signed scores kept and the straight-through gradient reaching S unchanged, without sign(S)).
    rank = "magnitude"

    def __init__(self, scores: Tensor, prune_rate: float, count: str = "exact"):
        super().__init__()
        if count not in mask_lib.PRUNED_COUNTS:
            raise ConfigError(f"unknown pruned_count {count!r}: expected one of {', '.join(mask_lib.PRUNED_COUNTS)}")
        self.scores = nn.Parameter(scores)
        self.prune_rate = float(prune_rate)
        self.count = count  # how many a layer of n prunes: floor(p n), or the published code's (mask.num_pruned)
        # Set by convert: the parameter it computes (a layer's `weight`, attention's `in_proj_weight`, ...), how its
        # random values were drawn (kind, fan scale; None: given, not drawn) and its (fan_in, gain), which IteRand
        # redraws from.
        self.param_name = "weight"
        self.weight_init: tuple[str, float] | None = None
        self.init_fan: tuple[float | None, float] = (None, RELU_GAIN)
        self.scope: GlobalScope | None = None  # prune_scope=global: the masks are chosen with the other layers'
        self._mask: Tensor | None = None
        self._mask_of: tuple[Tensor, float] | None = None  # (a copy of the scores, the prune rate) it was made from
        self._weight: Tensor | None = None
        self._weight_of: tuple[Tensor, Tensor] | None = None  # (the mask, a copy of the weight) it was made from

    # The caches are keyed on values, not on version counters: a write through `.data` (optimizers, user code)
    # bumps no counter. Comparing costs one pass over the scores (and the weight), far less than a selection.
    def mask(self) -> Tensor:
        """The current boolean mask, recomputed only when the scores' values or the prune rate changed."""
        if self.scope is not None:
            return self.scope.mask_of(self)
        scores = self.scores.detach()
        if self._mask_of is None or self._mask_of[1] != self.prune_rate or not _same(self._mask_of[0], scores):
            self._mask = mask_lib.topk_mask(self.ranked(scores), self.prune_rate, self.count)
            self._mask_of = (scores.clone(), self.prune_rate)
        return self._mask

    def forward(self, weight: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            # Training: the scores change at every step, so nothing is cached (and a compiled step has no
            # Python state to guard on). One |S| serves the mask and the gradient path.
            if self.scope is not None:
                hard = self.scope.step_mask_of(self)
                return self.effective_weight(weight, mask_lib.straight_through(self.scores.abs(), hard))
            ranked = self.ranked(self.scores)
            hard = mask_lib.topk_mask(ranked.detach(), self.prune_rate, self.count)
            return self.effective_weight(weight, mask_lib.straight_through(ranked, hard))
        if torch.compiler.is_compiling():
            # A compiled forward cannot keep Python-side caches without guarding (and recompiling) on them: it
            # computes the mask every call, as training does.
            return self.effective_weight(weight, mask_lib.topk_mask(self.ranked(self.scores.detach()), self.prune_rate,
                                                                    self.count).to(weight.dtype))
        # Without autograd (evaluation, inference) the whole effective weight is reused across batches.
        mask = self.mask()
        if self._weight_of is None or self._weight_of[0] is not mask or not _same(self._weight_of[1], weight):
            self._weight = self.effective_weight(weight, mask.to(weight.dtype))
            self._weight_of = (mask, weight.detach().clone())
        return self._weight

    def ranked(self, scores: Tensor) -> Tensor:
        """What the top-k ranks, and the straight-through gradient flows through: |S| (dL/dS = dL/dM * sign(S))."""
        return scores if self.rank == "signed" else scores.abs()

    def effective_weight(self, weight: Tensor, mask: Tensor) -> Tensor:
        return self.combine(weight, mask)

    # A multi-level mask (multicoat's coats, a signed mask's inversions) is stored as nested boolean masks, the first
    # `mask()`, each further one a subset of the one before; the layer multiplies by `level_value` of them.
    def levels(self) -> list[Tensor] | None:
        """The nested masks a `.smask` stores, or None for a single 0/1 mask."""
        return None

    def level_sizes(self, n: int) -> list[int | None]:
        """How many weights each further level keeps, of n (None: any number), one entry per further level."""
        return []

    @staticmethod
    def level_value(stored: list[Tensor]) -> Tensor:
        """The float mask the layer multiplies by, from its stored levels: by default how many hold a weight."""
        return torch.stack([m.float() for m in stored]).sum(0)

    def combine(self, weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        """The method's effective weight from a weight and a float mask (straight-through when it carries a
        gradient); with `members`, both are stacks (N, *shape) of N runs' layers and each run gets its own weight."""
        return self.values(weight, mask, members) * mask

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        """What the kept positions hold: W_eff = values * M."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"prune_rate={self.prune_rate}"


class EdgePopup(ScoredWeight):
    """Edge-Popup (Ramanujan et al. 2020): the random weights, masked. `rank="signed"` keeps the largest signed
    scores instead of the largest |scores| (IteRand's published code)."""

    def __init__(self, scores: Tensor, prune_rate: float, count: str = "exact", rank: str = "magnitude"):
        super().__init__(scores, prune_rate, count)
        if rank not in SCORE_RANKS:
            raise ConfigError(f"unknown score_rank {rank!r}: expected one of {', '.join(SCORE_RANKS)}")
        self.rank = rank

    @staticmethod
    def values(weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return weight


class Biprop(ScoredWeight):
    """Biprop (Diffenderfer & Kailkhura 2021): signs of the random weights, masked, scaled by alpha. `grad` is
    the score gradient: "weight" (the published one, g * W) or "alpha" (g * alpha * sign(W))."""

    def __init__(self, scores: Tensor, prune_rate: float, grad: str = "weight", alpha_count: str = "exact",
                 count: str = "exact"):
        super().__init__(scores, prune_rate, count)
        if grad not in BIPROP_GRADS:
            raise ConfigError(f"unknown biprop_grad {grad!r}: expected one of {', '.join(BIPROP_GRADS)}")
        if alpha_count not in ALPHA_COUNTS:
            raise ConfigError(f"unknown biprop_alpha_count {alpha_count!r}: expected one of {', '.join(ALPHA_COUNTS)}")
        self.grad, self.alpha_count = grad, alpha_count

    def combine(self, weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        if self.grad == "alpha" or not mask.requires_grad:
            return super().combine(weight, mask, members)
        hard = mask.detach()
        # The value alpha * sign(W) * M; the second term is zero in value and carries the published gradient,
        # d W_eff / dM = W (GetQuantnet_binary's backward: g * |W| into |S|, times sign(W) from the layer).
        return self.values(weight, hard, members) * hard + weight.detach() * (mask - hard)

    def values(self, weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        return self.alpha(weight, mask, members) * weight.sign()

    def alpha(self, weight: Tensor, mask: Tensor, members: bool = False) -> Tensor:
        """alpha: the kept weights' |W| summed over the kept count ("exact"), or over the published code's
        int(k n), k = 1 - p, which is one less whenever k n is not an integer ("published"; docs/fidelity.md D6)."""
        if self.alpha_count == "exact":
            return biprop_alpha(weight, mask, members)
        n = mask[0].numel() if members else mask.numel()
        kept = float(Decimal(1) - Decimal(repr(self.prune_rate)))  # k as the published command line gives it
        return biprop_alpha(weight, mask, members, count=int(kept * n))

    def extra_repr(self) -> str:
        return f"prune_rate={self.prune_rate}, grad={self.grad}"


class GlobalScope:
    """The masked layers of one model pruned together (prune_scope=global): they keep the top (1 - p) of |S| over
    all their weights at once, so each layer's density follows its scores. Their masks are selected once for each
    set of score values: in training, once per step (keyed on the scores' version counters, which every optimizer
    step bumps); outside autograd, when the scores' values changed (as a layer's own mask is)."""

    def __init__(self, layers: list[ScoredWeight]):
        if len({p.prune_rate for p in layers}) != 1:
            raise ConfigError("layers pruned together share one prune rate")
        self.layers = layers
        self._step_key: tuple | None = None
        self._step_masks: list[Tensor] = []
        self._of: list[Tensor] | None = None  # copies of the scores the cached masks were selected from
        self._masks: list[Tensor] = []

    def _select(self) -> list[Tensor]:
        return mask_lib.global_topk_masks([p.scores.detach().abs() for p in self.layers], self.layers[0].prune_rate)

    def step_mask_of(self, layer: ScoredWeight) -> Tensor:
        key = tuple((p.scores._version, p.scores.data_ptr()) for p in self.layers)
        if key != self._step_key:
            self._step_masks, self._step_key = self._select(), key
        return self._step_masks[self.layers.index(layer)]

    def mask_of_all(self) -> list[Tensor]:
        self.mask_of(self.layers[0])
        return self._masks

    def mask_of(self, layer: ScoredWeight) -> Tensor:
        scores = [p.scores.detach() for p in self.layers]
        if self._of is None or not all(_same(c, s) for c, s in zip(self._of, scores)):
            self._masks, self._of = self._select(), [s.clone() for s in scores]
        return self._masks[self.layers.index(layer)]


def biprop_alpha(weight: Tensor, mask: Tensor, members: bool = False, count: int | None = None) -> Tensor:
    """||M * W||_1 / ||M||_1: the mean magnitude of the kept weights, as a constant (no gradient); with
    `members`, one alpha per run of a stack (N, *shape), shaped to broadcast against it.

    A float sum's value depends on the order torch adds in, which changes with the thread count and the device,
    and a .smask file must rebuild the same alpha everywhere. So the sum is taken over integers: each kept |w|
    is scaled by a power of two (exact) that brings the largest to 2^bits and rounded, and integers below 2^53
    add up exactly in float64, in any order. Rounding costs at most n / 2 units of 2^-bits of the largest term,
    far below float32's own rounding for any layer under a billion weights.
    """
    w = weight.detach() if members else weight.detach().unsqueeze(0)
    m = mask.detach() if members else mask.detach().unsqueeze(0)
    dims = tuple(range(1, w.dim()))  # per run, in the tensors' own memory layout (no copies)
    terms = w.abs().to(torch.promote_types(w.dtype, torch.float32)).mul_(m)  # float16 would overflow 2^bits
    n = terms[0].numel()
    bits = 53 - max(1, n - 1).bit_length()  # n terms below 2^bits: every partial sum is an exact float64
    _, exponent = torch.frexp(terms.amax(dims, keepdim=True))  # largest = f * 2^exponent, f in [0.5, 1)
    scale = _power_of_two(bits - exponent)
    total = terms.mul_(scale).round_().double().sum(dims, keepdim=True)
    # 0/1 terms: a float32 sum is exact below 2^24 (a float64 one beyond)
    if count is None:
        count = m.sum(dims, keepdim=True, dtype=torch.float64 if n >= 1 << 24 else None).clamp_min(1)
    else:  # another denominator than the kept count (the published int(k n))
        count = torch.full_like(total, float(max(1, count)))
    alpha = (total / scale.double() / count.double()).to(weight.dtype)
    return alpha if members else alpha.view(())


def _power_of_two(exponent: Tensor) -> Tensor:
    """2.0 ** exponent as float32, built from its bits (exact on every device; clamped to the normal range, which
    only costs precision for weights below 1e-29)."""
    return ((exponent.clamp(-126, 127) + 127).to(torch.int32) << 23).view(torch.float32)


def _same(copy: Tensor, current: Tensor) -> bool:
    return (copy.shape == current.shape and copy.dtype == current.dtype and copy.device == current.device
            and torch.equal(copy, current.detach()))


# A hook of the training loop: hook(model, cfg, epoch=..., step=...) edits the model in place and returns the
# records it logs to the run's schedule.jsonl (one dict per layer changed, with "kind", "epoch", "step", "layer").
Hook = Callable[..., list[dict]]


@dataclass(frozen=True)
class Method:
    """A mask method, declared in one place.

    - `parametrization`: the ScoredWeight subclass that computes the effective weight from the frozen weight and
      the mask, and so the score gradient (the straight-through mask carries it);
    - `weight_init`, `scale_fan`: its default weight init (any of `init.WEIGHT_INITS`), with the fan scaled by the
      keep fraction or not; `score_init(shape, seed=, name=, fan=)` draws a layer's initial scores;
    - `options`: config keys the parametrization takes, as {its constructor argument: the config key};
    - `after_step`, `end_of_epoch`: hooks run after every optimizer step and at the end of every epoch;
    - `loss_term(model, cfg)`: a tensor the training loss adds (a regularizer of the scores), or None;
    - `finetune_start(model)`: readies the found network for weight training (`finetune_epochs`) and returns the
      weights to train, or None where the method has no such stage;
    - `exact_count`: whether each mask keeps exactly n - floor(p n) of its n weights (a top-k; a `.smask` checks
      it), or only at most n (a threshold);
    - `stacks`: whether runs of it can train together, where one top-k selection per layer masks a stack of runs;
    - `smask_fields`, `smask_layer(p, weight, mask)`: numbers a `.smask` stores per layer (under those keys, which the
      file's layer schema `export.LAYER` must allow) and checks when it rebuilds the layer; the mask itself and
      any kept weight that no longer equals its seed's are always stored, and a multi-level mask's further levels
      (the parametrization's `levels`, `level_sizes`, `level_value`).
    """

    name: str
    parametrization: type[ScoredWeight]
    weight_init: str = "signed-constant"
    scale_fan: bool = False
    score_init: Callable[..., Tensor] = draw_scores
    options: Mapping[str, str] = field(default_factory=dict)
    after_step: Hook | None = None
    end_of_epoch: Hook | None = None
    loss_term: Callable[[nn.Module, Any], Tensor] | None = None
    finetune_start: Callable[[nn.Module], list[nn.Parameter]] | None = None
    exact_count: bool = True
    stacks: bool = True
    smask_fields: tuple[str, ...] = ()
    smask_layer: Callable[[ScoredWeight, Tensor, Tensor], dict[str, float]] | None = None
    summary: str = ""

    def options_from(self, cfg: Any) -> dict[str, Any]:
        """The parametrization's keyword arguments from a config's keys (those it leaves unset take their default)."""
        return {arg: getattr(cfg, key) for arg, key in self.options.items() if getattr(cfg, key, None) is not None}


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` known by its name to convert, the config, the command line and export."""
    if method.name == DENSE or "+" in method.name or not method.name:
        raise ConfigError(f"a method cannot be named {method.name!r} (dense, names with '+' and '' are taken)")
    if not (isinstance(method.parametrization, type) and issubclass(method.parametrization, ScoredWeight)):
        raise ConfigError(f"method {method.name}: parametrization must be a ScoredWeight subclass")
    if bool(method.smask_fields) != (method.smask_layer is not None):
        raise ConfigError(f"method {method.name}: smask_fields and smask_layer come together")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ConfigError(f"unknown mask method {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_init(name: str) -> tuple[str, bool]:
    """The method's default (weight_init, scale_fan): its `Method`'s, and Kaiming normal for dense."""
    if name == DENSE:
        return "kaiming-normal", False
    method = get_method(name)
    return method.weight_init, method.scale_fan


def mask_methods() -> tuple[str, ...]:
    return tuple(REGISTRY)


def method_names() -> tuple[str, ...]:
    """Every method a run can take: the registered mask methods, then dense."""
    return (*REGISTRY, DENSE)


register(Method("edge-popup", EdgePopup, weight_init="signed-constant", scale_fan=False, options={"count": "pruned_count", "rank": "score_rank"},
                summary="Ramanujan et al. 2020: the random weights, masked by the top-k of |scores|"))
register(Method("biprop", Biprop, weight_init="kaiming-normal", scale_fan=True,
                options={"grad": "biprop_grad", "alpha_count": "biprop_alpha_count", "count": "pruned_count"},
                smask_fields=("alpha",), smask_layer=lambda p, weight, mask: {"alpha": float(p.alpha(weight, mask))},
                summary="Diffenderfer & Kailkhura 2021: signs of the random weights, masked, scaled by alpha"))

from supermask.core import gem_miner, multicoat, signed, threshold  # noqa: E402,F401 - register themselves (they build on the names above)
