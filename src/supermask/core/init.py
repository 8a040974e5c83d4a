"""Weight and score initialisations, each drawn from its own seed per layer.

Every layer draws from a generator seeded by (seed, layer name), on the CPU, so a layer's random values do not
depend on the other layers, on the device, or on the order of conversion: a network is rebuilt from its seeds.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
from torch import Tensor

from supermask.errors import ConfigError

WEIGHT_INITS = ("signed-constant", "kaiming-normal", "kaiming-uniform", "elus")
# ELUS (Koster et al. 2022): the signed constant for ELU networks, He's sqrt(2 / fan_in) times this factor.
ELUS_FACTOR = math.sqrt(3.0)
# The scaled fan multiplies fan_in by the kept fraction (the papers' text) or by the pruned one (the published
# builders, whose `prune_rate` is the kept fraction but whose fan uses 1 - prune_rate; docs/fidelity.md D2).
SCALE_FAN_BY = ("kept", "pruned")


def fan_scale(prune_rate: float, by: str = "kept") -> float:
    """The fraction the scaled fan multiplies fan_in by."""
    if by not in SCALE_FAN_BY:
        raise ValueError(f"unknown scale_fan_by {by!r}: expected one of {', '.join(SCALE_FAN_BY)}")
    return 1.0 - float(prune_rate) if by == "kept" else float(prune_rate)
RELU_GAIN = math.sqrt(2.0)


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one named stream, stable across Python runs (unlike hash())."""
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, name))


def fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    """Inputs feeding one output unit: in_features, or in_channels * kernel size (groups already folded in)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight of at least 2 dimensions, got shape {tuple(shape)}")
    return int(shape[1] * math.prod(shape[2:]))


def weight_std(shape, keep_fraction: float = 1.0, fan: float | None = None, gain: float = RELU_GAIN) -> float:
    """Kaiming std gain / sqrt(fan_in); with the scaled fan, gain / sqrt(k * fan_in) keeps the signal's scale after
    pruning (layers without BatchNorm otherwise shrink the activations by about sqrt(k) each). `fan` overrides
    the (out, in, *kernel) reading of the shape for layers that store their weight otherwise (see convert)."""
    return gain / math.sqrt(keep_fraction * (fan_in(shape) if fan is None else fan))


def draw_weight(shape, kind: str, *, seed: int, name: str, keep_fraction: float = 1.0, fan: float | None = None,
                gain: float = RELU_GAIN, source: Tensor | None = None) -> Tensor:
    """A float32 CPU tensor of random weights of the given kind; with `source` (see `shared_source`), made from its
    values instead of fresh draws."""
    std = weight_std(shape, keep_fraction, fan, gain)
    if source is not None:
        return _from_source(shared_values(source, shape, seed=seed, name=name), kind, std)
    gen = generator(seed, f"weight/{name}")
    if kind == "signed-constant":
        return torch.randn(shape, generator=gen).sign_().mul_(std)
    if kind == "elus":
        return torch.randn(shape, generator=gen).sign_().mul_(std * ELUS_FACTOR)
    if kind == "kaiming-normal":
        return torch.randn(shape, generator=gen).mul_(std)
    if kind == "kaiming-uniform":
        bound = math.sqrt(3.0) * std
        return torch.rand(shape, generator=gen).mul_(2 * bound).sub_(bound)
    raise ValueError(f"unknown weight_init {kind!r}: expected one of {', '.join(WEIGHT_INITS)}")


# A random source smaller than the model (PEMN's "random prototype", Bai et al. 2022): weight_source=shared:N draws
# every masked tensor from one vector of N standard-normal values. Each tensor tiles the vector, in an order of its
# own, to its size, puts the values in its own random positions, and scales them to its init. PEMN instead takes one permuted tiling of the
# largest layer's own weights and gives every layer a prefix of it, at that largest layer's scale (README).
WEIGHT_SOURCES = "full or shared:N"


def source_size(weight_source: str) -> int | None:
    """N of weight_source=shared:N, None for full; a bad value is refused naming what is allowed."""
    if weight_source == "full":
        return None
    match = re.fullmatch(r"shared:([0-9]+)", weight_source)
    if not match or int(match[1]) < 1:
        raise ConfigError(f"weight_source={weight_source!r} is not {WEIGHT_SOURCES} (N an integer >= 1)")
    return int(match[1])


def shared_source(seed: int, size: int) -> Tensor:
    """The N standard-normal values every masked tensor is drawn from, from the weight seed."""
    return torch.randn(size, generator=generator(seed, "weight/shared-source"))


def shared_values(source: Tensor, shape, *, seed: int, name: str) -> Tensor:
    """The source tiled to the tensor's n values in the tensor's own random order: each value ceil(n / N) or
    floor(n / N) times (which ones get the extra copy, or for n < N which n values it takes, is the tensor's own
    random draw, so layers smaller than the source do not all take the same values)."""
    gen = generator(seed, f"weight/{name}/shared-order")
    n, size = math.prod(shape), source.numel()
    picked = source[torch.randperm(size, generator=gen)]
    tiled = picked.repeat(-(-n // size))[:n]
    return tiled[torch.randperm(n, generator=gen)].reshape(shape)


def _from_source(values: Tensor, kind: str, std: float) -> Tensor:
    if kind == "signed-constant":
        return values.sign().mul_(std)
    if kind == "elus":
        return values.sign().mul_(std * ELUS_FACTOR)
    if kind == "kaiming-normal":
        return values.mul(std)
    if kind == "kaiming-uniform":  # each normal value through its CDF: uniform on (0, 1), then on (-bound, bound)
        bound = math.sqrt(3.0) * std
        return torch.special.ndtr(values).mul_(2 * bound).sub_(bound)
    raise ValueError(f"unknown weight_init {kind!r}: expected one of {', '.join(WEIGHT_INITS)}")


def draw_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:
    """Scores as PyTorch's default layer init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return draw_uniform(shape, 1.0 / math.sqrt(fan_in(shape) if fan is None else fan), seed=seed, name=f"scores/{name}")


SCORE_INITS = ("method", "kaiming-uniform")  # the method's own score init, or IteRand's published one


def draw_kaiming_uniform_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:
    """Scores as IteRand's published `init_mode_mask: kaiming_uniform` (ReLU gain): U(-sqrt(6/fan_in), sqrt(6/fan_in)),
    sqrt(6) = 2.45 times the default bound."""
    return draw_uniform(shape, math.sqrt(6.0 / (fan_in(shape) if fan is None else fan)), seed=seed, name=f"scores/{name}")


def draw_uniform(shape, bound: float, *, seed: int, name: str) -> Tensor:
    """U(-bound, bound) from the named stream (scores, and biases drawn the layers' default way)."""
    return torch.rand(shape, generator=generator(seed, name)).mul_(2 * bound).sub_(bound)
