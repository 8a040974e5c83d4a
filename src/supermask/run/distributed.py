"""Data-parallel runs under torchrun: process group set-up, failure propagation, buffer averaging and agreement checks.

`torchrun --nproc_per_node N -m supermask train CONFIG ...` runs one search over N processes. Every process
draws the same global batch (same seeds), augments it, and keeps its own slice; each sample's loss weighs
1/batch (times N, as DDP averages the gradients), so the gradient is that of the global batch however it is split
and the run matches a single process within float tolerance.
IWR and IteRand are deterministic functions of the (synchronized) scores and seeds, so every process applies the
same steps; a checksum across processes verifies it after every step. Only rank 0 writes files.
BatchNorm layers normalize each process's slice on its own (as in any DistributedDataParallel run); their running
statistics are averaged over the processes after every epoch, before evaluation and saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from supermask.core.convert import masked_layers, random_weight
from supermask.compat import unambiguous_strides
from supermask.errors import SupermaskError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device() -> torch.device:
    """The device of this process under a launcher: its own GPU when there are GPUs."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup(device: torch.device) -> Group:
    """Join the process group the launcher describes (gloo on CPUs, NCCL on GPUs); a no-op for one process."""
    if not launched():
        return Group()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, group: Group) -> torch.Tensor:
    if group.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_true(flag: bool, group: Group, device: torch.device) -> bool:
    """Whether `flag` holds on any process (so all processes take the same branch)."""
    if not group.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()


@torch.no_grad()
def check_agreement(model: nn.Module, group: Group, what: str, buffers: bool = False) -> None:
    """Raise on every process if the processes' masked weights or masks (and with `buffers`, their BatchNorm
    statistics and other buffers) differ."""
    if not group.active:
        return
    tensors = []
    for _, layer, p in masked_layers(model):
        tensors += [random_weight(layer, p), p.mask()]
    if buffers:
        tensors += list(model.buffers())
    sums = []
    for t in tensors:
        t = t.double()
        positions = torch.arange(1, t.numel() + 1, device=t.device, dtype=torch.float64).view_as(t)
        sums.append((t * positions).sum())
    local = torch.stack(sums) if sums else torch.zeros(1, dtype=torch.float64, device=next(model.parameters()).device)
    gathered = [torch.zeros_like(local) for _ in range(group.world)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered[1:]):
        raise SupermaskError(f"processes disagree on the network after {what}; the run is no longer data-parallel")


@torch.no_grad()
def average_buffers(model: nn.Module, group: Group) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the processes.

    Each process's running statistics follow its own slices of the batches. Running statistics are moving
    averages, linear in the batch statistics, so the mean of the processes' running statistics is the moving
    average of the per-step mean over processes: one set of statistics, the same on every process, which is
    what evaluation measures and the checkpoint keeps. (Integer buffers, the batch counts, agree already.)
    """
    if not group.active:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(group.world)


def stop_if_any_failed(error: BaseException | None, group: Group, device: torch.device) -> None:
    """Raise `error` on its process and a one-line error naming it on every other one, if any process had one.

    Call it at a point every process reaches, before the first collective that a failed process would miss
    (otherwise the others wait for it there, up to the back-end's timeout of many minutes)."""
    if not group.active:
        if error is not None:
            raise error
        return
    # every process's message as a fixed-size byte tensor (no pickling of what another process sends)
    size = 512
    text = "" if error is None else (str(error) or type(error).__name__)
    encoded = (b"!" + text.encode()[: size - 1]) if error is not None else b""
    local = torch.zeros(size, dtype=torch.uint8, device=device)
    local[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8, device=device)
    gathered = [torch.zeros_like(local) for _ in range(group.world)]
    dist.all_gather(gathered, local)
    if error is not None:
        raise error
    for rank, g in enumerate(gathered):
        if g[0].item():
            message = bytes(g[1:].tolist()).rstrip(b"\0").decode(errors="replace")
            raise SupermaskError(f"process {rank} failed during set-up: {message}")


def wrap(model: nn.Module, group: Group, device: torch.device) -> nn.Module:
    """The module that runs the forward pass: DistributedDataParallel over `model` when there are processes."""
    if not group.active:
        return model
    unambiguous_strides(model)
    ids = [device.index] if device.type == "cuda" else None
    # buffers are averaged at the end of each epoch (average_buffers) instead of rank 0's broadcast every step
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
