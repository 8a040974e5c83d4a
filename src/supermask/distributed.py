"""Data-parallel runs under torchrun: process group set-up, batch sharding, and agreement checks.

`torchrun --nproc_per_node N -m supermask train CONFIG ...` runs one search over N processes. Every process
draws the same global batch (same seeds), augments it, and keeps its own slice, so the averaged gradient is that
of the global batch: with a batch size divisible by N the run matches a single process within float tolerance.
IWR and IteRand are deterministic functions of the (synchronized) scores and seeds, so every process applies the
same steps; a checksum across processes verifies it after every step. Only rank 0 writes files.
BatchNorm layers normalize each process's slice on its own (as in any DistributedDataParallel run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .convert import masked_layers, random_weight
from .errors import SupermaskError


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
def check_agreement(model: nn.Module, group: Group, what: str) -> None:
    """Raise on every process if the processes' masked weights or masks differ."""
    if not group.active:
        return
    sums = []
    for _, layer, p in masked_layers(model):
        w = random_weight(layer, p).double()
        positions = torch.arange(1, w.numel() + 1, device=w.device, dtype=torch.float64).view_as(w)
        sums += [(w * positions).sum(), p.mask().double().mul(positions).sum()]
    local = torch.stack(sums) if sums else torch.zeros(1, dtype=torch.float64, device=next(model.parameters()).device)
    gathered = [torch.zeros_like(local) for _ in range(group.world)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered[1:]):
        raise SupermaskError(f"processes disagree on the network after {what}; the run is no longer data-parallel")


def wrap(model: nn.Module, group: Group, device: torch.device) -> nn.Module:
    """The module that runs the forward pass: DistributedDataParallel over `model` when there are processes."""
    if not group.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
