"""Weight and score initialisations, each drawn from its own seed per layer.

Every layer draws from a generator seeded by (seed, layer name), on the CPU, so a layer's random values do not
depend on the other layers, on the device, or on the order of conversion: a network is rebuilt from its seeds.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

WEIGHT_INITS = ("signed-constant", "kaiming-normal", "kaiming-uniform")
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
                gain: float = RELU_GAIN) -> Tensor:
    """A float32 CPU tensor of random weights of the given kind."""
    std = weight_std(shape, keep_fraction, fan, gain)
    gen = generator(seed, f"weight/{name}")
    if kind == "signed-constant":
        return torch.randn(shape, generator=gen).sign_().mul_(std)
    if kind == "kaiming-normal":
        return torch.randn(shape, generator=gen).mul_(std)
    if kind == "kaiming-uniform":
        bound = math.sqrt(3.0) * std
        return torch.rand(shape, generator=gen).mul_(2 * bound).sub_(bound)
    raise ValueError(f"unknown weight_init {kind!r}: expected one of {', '.join(WEIGHT_INITS)}")


def draw_scores(shape, *, seed: int, name: str, fan: float | None = None) -> Tensor:
    """Scores as PyTorch's default layer init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return draw_uniform(shape, 1.0 / math.sqrt(fan_in(shape) if fan is None else fan), seed=seed, name=f"scores/{name}")


def draw_uniform(shape, bound: float, *, seed: int, name: str) -> Tensor:
    """U(-bound, bound) from the named stream (scores, and biases drawn the layers' default way)."""
    return torch.rand(shape, generator=generator(seed, name)).mul_(2 * bound).sub_(bound)
