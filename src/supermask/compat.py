"""Workarounds for the torch build (2.13, CPU) and the C library this project was measured on, in one place.

Each says what it works around and how it was seen, so that it can be deleted when torch fixes the cause:
- `keep_freed_memory`: glibc returns freed activation-sized blocks to the OS every training step (a speed fix).
- `Flatten`: flattening a channels-last activation hands the max-pool before it a channels-first gradient, which
  its CPU backward converts back at every step (a speed fix).
- `StridedPointwise`: oneDNN's channels-last weight gradient of a strided 1x1 convolution corrupted the heap on
  one thread (a crash fix).
- `unambiguous_strides`: channels-last tensors with a size-1 dimension keep strides DDP and the gloo reducer
  mishandle (a crash and a per-step copy).
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that does not apply (not glibc).

    glibc serves blocks above a threshold (dynamic, at most 32 MiB) with fresh mmap calls and hands freed memory
    at the top of the heap back to the OS. A training step frees and re-allocates the same activation-sized blocks
    every step, so each step pays the page faults and zeroing of all of them again. Raising both thresholds keeps
    the blocks for reuse: measured on a 2-core CPU, a Conv-2 dense step went from 255 to 186 ms and an Edge-Popup
    step similarly. The price is that the process keeps its peak memory until it exits, which a training process
    does anyway. The command line applies it (the process is its own); library users may call it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl) or none by that name
        return False
    return mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


class _ContiguousKeepGradLayout(torch.autograd.Function):
    """x.contiguous(), whose gradient goes back in x's own layout. Flattening a channels-last activation otherwise
    hands the max-pool before it a channels-first gradient, and its CPU backward then converts every 4-D tensor
    it touches (measured: 2 copies of 8M floats per Conv-2 step, 10% of the step)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ARG004
        x = inputs[0]
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class Flatten(nn.Flatten):
    """nn.Flatten that keeps a channels-last network's gradients channels-last (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = _ContiguousKeepGradLayout.apply(x)
        return super().forward(x)


class StridedPointwise(nn.Conv2d):
    """A strided 1x1 convolution (a ResNet shortcut), computed as a stride-1 one on the subsampled input: the same
    sums, and it steers clear of a heap corruption in oneDNN's channels-last weight gradient of strided 1x1
    convolutions on one thread (torch 2.13, seen at 4 -> 8 channels: ResNet-18 width 1/16 in a sweep worker)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return nn.functional.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, self.dilation, self.groups)


def unambiguous_strides(model: nn.Module) -> None:
    """Give every parameter and buffer that is contiguous its canonical row-major strides, in place.

    A channels-last tensor with a dimension of size 1 (a 1x1 kernel, a 1-channel input layer) is also
    contiguous, but keeps strides such as (16, 1, 16, 16) where the row-major ones are (16, 1, 1, 1). The
    gradients of such a layer come back row-major, so DDP warned ("Grad strides do not match bucket view
    strides") and copied them every step, and the gloo CPU reducer corrupted the heap on these strides (a
    channels-last ResNet-18 aborted in its first backward with torch 2.13). Both layouts are the same memory
    order, so nothing else changes: the layers still compute channels-last.
    """
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_contiguous() and t.stride() != torch.empty(t.shape, device="meta").stride():
            t.data = t.data.clone(memory_format=torch.contiguous_format)
