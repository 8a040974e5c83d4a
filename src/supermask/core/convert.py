"""Turn every weight of any PyTorch model into a masked weight, say what was done, and read the masks back.

A "target" is a floating-point parameter of two or more dimensions that a module of a known kind uses as a
weight. Its init reads the fan-in off the layer's meaning, not off the tensor's layout:

    module                      parameters (shape)                              fan_in                    gain
    Conv1d/2d/3d                weight (out, in/g, *k)                          in/g * prod(k)            sqrt 2
    ConvTranspose1d/2d/3d       weight (in, out/g, *k)                          in/g * prod(k) / prod(s)  sqrt 2
    Linear                      weight (out, in)                                in                        sqrt 2
    Hugging Face Conv1D         weight (in, out)                                in                        sqrt 2
    MultiheadAttention          in_proj_weight (3E, E), or q/k/v_proj_weight    E, kdim, vdim             sqrt 2
                                (E, E/kdim/vdim); out_proj is a Linear
    Embedding, EmbeddingBag     weight (num, dim)                               1                         1
    RNN, LSTM, GRU              weight_ih_l*, weight_hh_l*, weight_hr_l*        the matrix's input width  1
                                (_reverse too)

A transposed conv's output sums in/g * prod(k) / prod(stride) weighted inputs on average, so that is its fan-in.
An embedding is a lookup, not a sum: it is drawn like PyTorch's N(0, 1) (std 1, or 1/sqrt(k) with the scaled fan
so a looked-up vector keeps its mean square after pruning), its padding row zero. Recurrent gates are tanh and
sigmoid, not ReLU, so RNN weights use gain 1 (LeCun's 1/sqrt(fan_in), close to PyTorch's U(+-1/sqrt(hidden))).

Everything else is frozen (or trained, for `method="dense"`). A network is its seeds plus its masks, so unless
`weight_init="keep"` the frozen parameters of known layers are drawn from the weight seed too: biases of
Conv/Linear/Conv1D layers U(+-1/sqrt(fan_in)), RNN biases U(+-1/sqrt(hidden)), attention's in_proj_bias zero and
bias_k/bias_v N(0, 1/E) (PyTorch's own choices), norm layers' affine ones and zeros (running statistics reset).
A parameter of an unknown module keeps the model's value; the report says so (a `.smask` stores it as it is).

Shared tensors (`b.weight = a.weight`, e.g. GPT-2's lm_head and wte) get one mask: the first owner in module order
decides the init and names the mask; the others compute the same effective weight from the same scores.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from supermask.core.init import (RELU_GAIN, SCALE_FAN_BY, SCORE_INITS, WEIGHT_INITS, draw_kaiming_uniform_scores,
                                 draw_uniform, draw_weight, fan_scale, generator, shared_source, source_size)
from supermask.core.density import LAYER_DENSITIES, er_prune_rates
from supermask.core.mask import num_pruned
from supermask.core.methods import DENSE, GlobalScope, ScoredWeight, default_init, get_method, method_names
from supermask.errors import ConfigError

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

PRUNE_SCOPES = ("layer", "global")  # where prune_rate applies: each masked tensor, or all of them together


def _is_hf_conv1d(m: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (GPT-2's projections), by duck typing: transformers stays optional. The
    class's bases count too: once parametrized, a layer's class is a generated subclass of its own."""
    w = _original(m, "weight") if any(c.__name__ == "Conv1D" for c in type(m).__mro__) else None
    return isinstance(w, Tensor) and isinstance(getattr(m, "nf", None), int) and w.dim() == 2 and w.shape[1] == m.nf


def _weight_fans(m: nn.Module) -> dict[str, tuple[float, float]]:
    """{parameter name: (fan_in, gain)} of the weights of `m` that supermask masks (see the module docstring)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        w = _original(m, "weight")
        if m.transposed:
            return {"weight": (w.shape[0] / m.groups * math.prod(w.shape[2:]) / math.prod(m.stride), RELU_GAIN)}
        return {"weight": (w.shape[1] * math.prod(w.shape[2:]), RELU_GAIN)}
    if isinstance(m, nn.Linear):
        return {"weight": (_original(m, "weight").shape[1], RELU_GAIN)}
    if _is_hf_conv1d(m):
        return {"weight": (_original(m, "weight").shape[0], RELU_GAIN)}
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return {"weight": (1.0, 1.0)}
    if isinstance(m, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return {n: (_original(m, n).shape[1], RELU_GAIN) for n in names if _original(m, n) is not None}
    if isinstance(m, nn.RNNBase):
        return {n: (_original(m, n).shape[1], 1.0) for n in m._flat_weights_names if n.startswith("weight_")}
    return {}


def _frozen_init(m: nn.Module, name: str, fans: dict[str, tuple[float, float]]) -> Callable[[tuple, int, str], Tensor] | None:
    """How a known layer's non-masked parameter is drawn from the weight seed, as (shape, seed, stream) -> tensor;
    None for parameters of unknown modules, which keep the model's values."""
    uniform = lambda bound: lambda shape, seed, stream: draw_uniform(shape, bound, seed=seed, name=stream)  # noqa: E731
    if isinstance(m, _NORMS):
        fill = 1.0 if name == "weight" else 0.0
        return lambda shape, seed, stream: torch.full(shape, fill)
    if isinstance(m, nn.MultiheadAttention):
        if name in ("bias_k", "bias_v"):  # xavier_normal of (1, 1, E), as PyTorch: std 1/sqrt(E)
            return lambda shape, seed, stream: torch.randn(shape, generator=generator(seed, stream)) / math.sqrt(m.embed_dim)
        if name == "in_proj_bias":
            return lambda shape, seed, stream: torch.zeros(shape)
    if isinstance(m, nn.RNNBase) and name.startswith("bias_"):
        return uniform(1.0 / math.sqrt(m.hidden_size))
    if name == "bias" and "weight" in fans:
        return uniform(1.0 / math.sqrt(fans["weight"][0]))
    return None


def _original(m: nn.Module, name: str) -> Tensor | None:
    """A module's own tensor `name`: the parameter, or under a parametrization its original."""
    if parametrize.is_parametrized(m, name):
        return m.parametrizations[name].original
    return m._parameters.get(name)


@dataclass(frozen=True)
class Slot:
    """One parameter of a model, at its first owner in module order."""

    module_name: str
    module: nn.Module
    name: str
    fan: tuple[float, float] | None  # (fan_in, gain) when it is a weight supermask masks
    aliases: tuple[str, ...] = ()   # qualified names of later owners of the same tensor

    @property
    def qualname(self) -> str:
        return f"{self.module_name}.{self.name}" if self.module_name else self.name

    @property
    def key(self) -> str:
        """Its name in `masks`, the checkpoint's masks file and the .smask: the layer name for a `weight`
        (as before other weights were masked), the qualified parameter name otherwise."""
        return self.module_name if self.name == "weight" and self.module_name else self.qualname

    @property
    def tensor(self) -> Tensor:
        return _original(self.module, self.name)

    @property
    def unsupported(self) -> bool:
        """A floating-point tensor of two or more dimensions that supermask does not know how to mask."""
        t = self.tensor
        return (self.fan is None and t.is_floating_point() and t.dim() >= 2
                and _frozen_init(self.module, self.name, _weight_fans(self.module)) is None)


def parameter_slots(model: nn.Module) -> list[Slot]:
    """Every parameter of `model` (converted or not) once, in module order, with its owners."""
    first: dict[int, int] = {}
    slots: list[Slot] = []
    aliases: dict[int, list[str]] = {}
    for mname, m in model.named_modules():
        if isinstance(m, (parametrize.ParametrizationList, ScoredWeight)):
            continue  # supermask's own modules: their tensors are the originals and scores of a layer's slots
        fans = _weight_fans(m)
        names = list(m._parameters) + (list(m.parametrizations) if parametrize.is_parametrized(m) else [])
        for name in names:
            t = _original(m, name)
            if t is None:
                continue
            if id(t) in first:
                aliases.setdefault(id(t), []).append(f"{mname}.{name}" if mname else name)
                continue
            first[id(t)] = len(slots)
            fan = fans.get(name) if t.is_floating_point() and t.dim() >= 2 else None
            slots.append(Slot(mname, m, name, fan))
    return [Slot(s.module_name, s.module, s.name, s.fan, tuple(aliases.get(id(s.tensor), ()))) for s in slots]


def weight_tensors(model: nn.Module) -> dict[str, Tensor]:
    """{key: tensor} of every weight supermask masks by default (under a mask, the frozen original)."""
    return {s.key: s.tensor for s in parameter_slots(model) if s.fan is not None}


def _patterns(value: str | Iterable[str], what: str) -> list[str]:
    if isinstance(value, str):  # one pattern, not its characters
        return [value]
    patterns = list(value)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{what} patterns must be strings, got {patterns!r}")
    return patterns


def _matching(slots: list[Slot], patterns: list[str], what: str) -> set[str]:
    """Qualified names of the slots a pattern names: by key, qualified parameter name or layer name (globs
    allowed), or "first"/"last" in module order."""
    hit: set[str] = set()
    for pattern in patterns:
        if pattern in ("first", "last"):
            hit.update(s.qualname for s in slots[:1] if pattern == "first")
            hit.update(s.qualname for s in slots[-1:] if pattern == "last")
            continue
        found = {s.qualname for s in slots
                 if any(fnmatch.fnmatchcase(n, pattern) for n in (s.key, s.qualname, s.module_name))}
        if not found:
            raise ConfigError(f"{what} pattern {pattern!r} matches no maskable weight; they are: "
                              f"{', '.join(s.qualname for s in slots)}")
        hit |= found
    return hit


@dataclass
class Report:
    """What `convert` did to each parameter: masked (with its kept count), frozen or trained, and where its
    value comes from ("seed": drawn from the weight seed; "kept": the model's own value)."""

    method: str
    prune_rate: float
    weight_init: str
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    prune_scope: str = "layer"  # global: the kept counts are those at the initial scores

    def totals(self) -> dict[str, int]:
        rows = self.parameters.values()
        count = lambda **kw: sum(r["numel"] for r in rows if all(r.get(k) == v for k, v in kw.items()))  # noqa: E731
        return {"masked": count(status="masked"), "kept": sum(r.get("kept", 0) for r in rows),
                "frozen": count(status="frozen"), "trained": count(status="trained"),
                "not_from_seed": count(source="kept")}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "prune_rate": self.prune_rate, "weight_init": self.weight_init,
                "prune_scope": self.prune_scope, "totals": self.totals(), "unsupported": self.unsupported, "parameters": self.parameters}

    def __str__(self) -> str:
        """An aligned table, one row per parameter (kept and pruned counts of the masked ones), then the totals."""
        rows = []
        for name, r in self.parameters.items():
            notes = ([r["note"]] if r.get("note") else []) + ([f"shared with {', '.join(r['tied'])}"] if r.get("tied") else [])
            counts = [f"{r['kept']:,}", f"{r['numel'] - r['kept']:,}"] if "kept" in r else ["", ""]
            rows.append([name, str(tuple(r["shape"])), r["status"], r["source"], f"{r['numel']:,}", *counts, "; ".join(notes)])
        t, rs = self.totals(), self.parameters.values()
        tensors = lambda status: sum(r["status"] == status for r in rs)  # noqa: E731
        share = f"{t['kept'] / t['masked']:.2%} kept" if t["masked"] else ""
        totals = [["masked", f"{tensors('masked')} tensors", "", "", f"{t['masked']:,}", f"{t['kept']:,}",
                   f"{t['masked'] - t['kept']:,}", share],
                  ["frozen", f"{tensors('frozen')} tensors", "", "", f"{t['frozen']:,}", "", "",
                   f"{t['not_from_seed']:,} values not drawn from the seed" if t["not_from_seed"] else ""],
                  ["trained", f"{tensors('trained')} tensors", "", "", f"{t['trained']:,}", "", "", ""]]
        head = ["parameter", "shape", "status", "source", "n", "kept", "pruned", ""]
        widths = [max(len(row[i]) for row in [head] + rows + totals) for i in range(7)]

        def line(row: list[str]) -> str:  # names and words left, counts right, notes after the table
            cells = " ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
            return f"{cells}  {row[7]}" if row[7] else cells.rstrip()

        rule = "-" * (sum(widths) + len(widths) - 1)
        where = "per tensor" if self.prune_scope == "layer" else "over all masked tensors together, at the initial scores"
        rate = f", prune rate p = {self.prune_rate:g} (pruned = floor(p n) {where})" if t["masked"] else ""
        title = f"{self.method}{rate}, weight_init {self.weight_init}"
        return "\n".join([title, line(head), rule, *map(line, rows), rule, *map(line, totals)])


def convert(
    model: nn.Module,
    method: str = "edge-popup",
    prune_rate: float = 0.5,
    *,
    weight_init: str | None = None,
    scale_fan: bool | None = None,
    weight_seed: int = 0,
    score_seed: int = 0,
    skip: str | Iterable[str] = (),
    include: str | Iterable[str] = (),
    strict: bool = False,
    scale_fan_by: str = "kept",
    weight_source: str = "full",
    prune_scope: str = "layer",
    options: Mapping[str, Any] | None = None,
    layer_streams: str = "independent",
    layer_density: str = "uniform",
    score_init: str = "method",
) -> nn.Module:
    """Make `model` a subnetwork search over its random weights, in place, and return it.

    Every weight listed in the module docstring gets fresh random values from `weight_seed` (unless
    `weight_init="keep"`, which keeps the model's current weights, e.g. pretrained ones), and so do the biases
    and norm affines of known layers. For the mask methods each such weight gets trainable scores from
    `score_seed` and becomes the method's effective weight; every other parameter is frozen, since only scores
    are searched. `include` (default: all) and `skip` choose the masked weights by key, qualified parameter name
    or layer name, glob patterns, or "first"/"last". For `method="dense"` the weights are only re-initialised
    and everything stays trainable.

    A float parameter of two or more dimensions of a module supermask does not know is left as it is, named in
    the report and in a warning; `strict=True` refuses it instead. The report: `report(model)`.

    `scale_fan_by` is what the scaled fan multiplies fan_in by: "kept" (1 - p) or "pruned" (p, as the published
    builders compute it). `weight_source="shared:N"` draws every masked weight from one vector of N random values
    (`supermask.core.init.shared_source`) instead of fresh draws. `prune_scope="global"` keeps the top (1 - p) of
    |S| over all masked weights together instead of in each tensor (exactly n - floor(p n) of their n weights, each
    tensor's share following its scores). `options` go to the method's parametrization, e.g. Biprop's score gradient
    `{"grad": "alpha"}` (default "weight", the published code's; see `supermask.core.methods`).
    `layer_streams="shared"` draws every masked tensor's weights and scores from the start of one stream per seed
    instead of one stream per layer, as the IWR code reseeds before each layer: tensors of one shape then get the
    same weights and scores (docs/fidelity.md D9). `layer_density="er"` gives each masked tensor its own prune rate,
    SupSup's Erdős–Rényi budget at the total density 1 - prune_rate (`supermask.core.density`). `score_init=
    "kaiming-uniform"` draws the scores U(±sqrt(6 / fan_in)) (IteRand's published code) instead of the method's own way.

    The defaults follow the papers: Edge-Popup uses the signed Kaiming constant, Biprop Kaiming normal with the
    fan scaled by the keep fraction, dense Kaiming normal.
    """
    if layer_streams not in LAYER_STREAMS:
        raise ConfigError(f"unknown layer_streams {layer_streams!r}: expected one of {', '.join(LAYER_STREAMS)}")
    if score_init not in SCORE_INITS:
        raise ConfigError(f"unknown score_init {score_init!r}: expected one of {', '.join(SCORE_INITS)}")
    skip = [skip] if isinstance(skip, str) else skip  # one pattern, not its characters
    if method not in method_names():
        raise ConfigError(f"unknown method {method!r}: expected one of {', '.join(method_names())}")
    spec = get_method(method) if method != DENSE else None
    draw_scores = None if spec is None else (draw_kaiming_uniform_scores if score_init == "kaiming-uniform"
                                             else spec.score_init)
    if not 0.0 <= float(prune_rate) < 1.0:
        raise ConfigError(f"prune_rate {prune_rate!r} is outside [0, 1): it is the fraction of weights removed")
    weight_init = weight_init or default_init(method)[0]
    if weight_init not in WEIGHT_INITS + ("keep",):
        raise ConfigError(f"unknown weight_init {weight_init!r}: expected one of {', '.join(WEIGHT_INITS + ('keep',))}")
    if scale_fan is None:
        scale_fan = default_init(method)[1]
    skip, include = _patterns(skip, "skip"), _patterns(include, "include")
    done = next((n for n, m in model.named_modules() if parametrize.is_parametrized(m)), None)
    if done is not None:
        raise ConfigError(f"model is already converted (layer {done or type(model).__name__} is parametrized)")
    slots = parameter_slots(model)
    targets = [s for s in slots if s.fan is not None]
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no weight supermask can mask (Conv, Linear, attention, "
                          "embedding or recurrent layers)")
    unsupported = [s.qualname for s in slots if s.unsupported]
    if unsupported and strict:
        raise ConfigError(f"strict: supermask cannot mask {', '.join(unsupported)} (a weight of a module it does not know)")
    chosen = _matching(targets, include, "include") if include else {s.qualname for s in targets}
    chosen -= _matching(targets, skip, "skip")
    masked = spec is not None
    if scale_fan_by not in SCALE_FAN_BY:
        raise ConfigError(f"unknown scale_fan_by {scale_fan_by!r}: expected one of {', '.join(SCALE_FAN_BY)}")
    keep_fraction = fan_scale(prune_rate, scale_fan_by) if (scale_fan and masked) else 1.0
    if keep_fraction <= 0:
        raise ConfigError("scale_fan_by=pruned with prune_rate=0 would scale the fan by 0")
    if prune_scope not in PRUNE_SCOPES:
        raise ConfigError(f"unknown prune_scope {prune_scope!r}: expected one of {', '.join(PRUNE_SCOPES)}")
    size = source_size(weight_source)
    if size is not None and (not masked or weight_init == "keep"):
        raise ConfigError(f"weight_source={weight_source} draws the random weights of a mask search; method={method}, "
                          f"weight_init={weight_init} draws none")
    source = shared_source(weight_seed, size) if size is not None else None
    if layer_density not in LAYER_DENSITIES:
        raise ConfigError(f"unknown layer_density {layer_density!r}: expected one of {', '.join(LAYER_DENSITIES)}")
    rates = {s.qualname: float(prune_rate) for s in targets if s.qualname in chosen}
    if layer_density == "er" and masked:
        if prune_scope == "global":
            raise ConfigError("layer_density=er sets each layer's prune rate; prune_scope=global sets none: choose one")
        rates = er_prune_rates({s.qualname: tuple(s.tensor.shape) for s in targets if s.qualname in chosen}, prune_rate)
    report = Report(method, float(prune_rate), weight_init, unsupported=unsupported)

    if masked:
        model.requires_grad_(False)
    scored_layers: list[ScoredWeight] = []
    for s in slots:
        w = s.tensor
        row: dict[str, Any] = {"shape": list(w.shape), "numel": w.numel(), "status": "trained" if not masked else "frozen",
                               "source": "kept"}
        if s.aliases:
            row["tied"] = list(s.aliases)
        if weight_init != "keep":
            fresh = None
            if s.fan is not None:
                fan, gain = s.fan
                lk = keep_fraction if s.qualname in chosen else 1.0
                fresh = draw_weight(w.shape, weight_init, seed=weight_seed, name=_stream(s, chosen, layer_streams),
                                    keep_fraction=lk, fan=fan, gain=gain,
                                    source=source if s.qualname in chosen else None)
                pad = getattr(s.module, "padding_idx", None)
                if pad is not None:
                    fresh[pad] = 0  # nn.Embedding's padding vector is zero
            elif (init := _frozen_init(s.module, s.name, _weight_fans(s.module))) is not None:
                fresh = init(tuple(w.shape), weight_seed, f"frozen/{s.qualname}")
            if fresh is not None:
                with torch.no_grad():
                    w.copy_(fresh)
                row["source"] = "seed"
        if s.unsupported:
            row["note"] = "unsupported: a weight of a module supermask does not know"
        elif s.fan is not None and s.qualname not in chosen:
            row["note"] = "skipped"
        report.parameters[s.qualname] = row
        if not masked or s.qualname not in chosen:
            continue
        fan, gain = s.fan
        scores = draw_scores(w.shape, seed=score_seed, name=_stream(s, chosen, layer_streams),
                                 fan=fan).to(device=w.device, dtype=w.dtype)
        scored = spec.parametrization(scores, rates[s.qualname], **(options or {}))
        scored.param_name = s.name
        # IteRand redraws pruned weights from the layer's own init distribution.
        scored.weight_init = None if weight_init == "keep" else (weight_init, keep_fraction)
        scored.init_fan = s.fan
        scored_layers.append(scored)
        for owner in (s.qualname,) + s.aliases:  # a shared tensor: one mask, every owner computes from it
            module_name, _, pname = owner.rpartition(".")
            parametrize.register_parametrization(model.get_submodule(module_name), pname, scored)
        s.module.parametrizations[s.name].original.requires_grad_(False)
        row.update(status="masked", kept=w.numel() - num_pruned(w.numel(), scored.prune_rate, scored.count))
    if prune_scope == "global" and scored_layers:
        scope = GlobalScope(scored_layers)
        for scored in scored_layers:
            scored.scope = scope
        report.prune_scope = "global"
        for (qualname, row), mask in zip(((q, r) for q, r in report.parameters.items() if r["status"] == "masked"),
                                         scope.mask_of_all()):
            row["kept"] = int(mask.sum())  # at the initial scores; each tensor's share changes as its scores train
    if weight_init != "keep":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                m.reset_running_stats()  # statistics of earlier batches are no part of a seed
    if unsupported:
        warnings.warn(f"supermask cannot mask {', '.join(unsupported)}: left unmasked (see supermask.report(model))",
                      stacklevel=2)
    model.supermask_report = report
    return model


def report(model: nn.Module) -> Report:
    """The report `convert` made for `model`."""
    found = getattr(model, "supermask_report", None)
    if not isinstance(found, Report):
        raise ConfigError(f"{type(model).__name__} was not converted by supermask.convert: it has no report")
    return found


LAYER_STREAMS = ("independent", "shared")


def _stream(slot, chosen, layer_streams: str) -> str:
    """The name of the random stream a masked tensor draws from: its own key, or one shared by every masked tensor."""
    return "shared" if layer_streams == "shared" and slot.qualname in chosen else slot.key


def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, ScoredWeight]]:
    """(key, layer, its scored-weight parametrization) for every masked weight, shared ones once. The key is the
    layer name for a `weight`, the qualified parameter name otherwise (`p.param_name` names the parameter)."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, ScoredWeight) and id(p) not in seen:
                    seen.add(id(p))
                    yield (name if pname == "weight" and name else f"{name}.{pname}" if name else pname), module, p


def masks(model: nn.Module) -> dict[str, Tensor]:
    """The current masks, {key (see `masked_layers`): bool tensor shaped like the weight}."""
    return {name: p.mask().detach().clone() for name, _, p in masked_layers(model)}


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p.scores for _, _, p in masked_layers(model)]


def random_weight(layer: nn.Module, p: ScoredWeight | str | None = None) -> Tensor:
    """The frozen random tensor underneath a masked weight: the layer's `weight`, or the parameter that `p` (a
    parametrization from `masked_layers`, or a parameter name) computes."""
    name = "weight" if p is None else p if isinstance(p, str) else p.param_name
    return layer.parametrizations[name].original


def bake(model: nn.Module) -> nn.Module:
    """Replace every masked weight's parametrization by its current effective weight, in place: a plain model
    for deployment, with frozen weights (a shared tensor stays shared)."""
    baked: dict[int, nn.Parameter] = {}
    for _, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        weights = {}
        with torch.no_grad():
            for name, plist in module.parametrizations.items():
                if not any(isinstance(p, ScoredWeight) for p in plist):
                    continue
                if id(plist[0]) not in baked:
                    baked[id(plist[0])] = nn.Parameter(getattr(module, name).detach().clone(), requires_grad=False)
                weights[name] = baked[id(plist[0])]
        if not weights:
            continue
        # parametrize gives each layer a generated subclass, which copy.deepcopy shares between copies; its own
        # remove_parametrizations edits that class and would break the other copies, so undo it per instance.
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for name, w in weights.items():
            setattr(module, name, w)
    return model
