"""The published approach, re-implemented here as the speed peer (not used by supermask itself).

What the public Edge-Popup code does on every forward pass, and how it feeds data:
- each masked layer sorts ALL of its |scores| to find the mask, in a custom autograd function whose backward
  passes the gradient straight through;
- the layer is a subclass of Conv2d/Linear holding its scores, computing weight * mask, in the default (NCHW)
  memory layout;
- images are augmented one at a time (random crop with 4-pixel padding, horizontal flip, normalization) in a
  Dataset, and batched by a DataLoader.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


class SortedMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitudes: Tensor, prune_rate: float) -> Tensor:  # noqa: ARG004
        order = magnitudes.flatten().sort().indices  # a full sort, every call
        n_pruned = int(prune_rate * magnitudes.numel())
        mask = torch.ones(magnitudes.numel(), device=magnitudes.device)
        mask[order[:n_pruned]] = 0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ARG004
        return grad, None


def _add_scores(layer: nn.Module, prune_rate: float) -> None:
    layer.scores = nn.Parameter(torch.randn_like(layer.weight) * 0.01)
    layer.weight.requires_grad_(False)
    layer.prune_rate = prune_rate


class PeerConv(nn.Conv2d):
    def __init__(self, *args, prune_rate: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        _add_scores(self, prune_rate)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * SortedMask.apply(self.scores.abs(), self.prune_rate)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PeerLinear(nn.Linear):
    def __init__(self, *args, prune_rate: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        _add_scores(self, prune_rate)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * SortedMask.apply(self.scores.abs(), self.prune_rate), self.bias)


def peer_model(model: nn.Module, prune_rate: float) -> nn.Module:
    """`model` with every Conv2d/Linear replaced by the peer's masked layer of the same shape."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d):
            new = PeerConv(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                           bias=child.bias is not None, prune_rate=prune_rate)
        elif isinstance(child, nn.Linear):
            new = PeerLinear(child.in_features, child.out_features, bias=child.bias is not None, prune_rate=prune_rate)
        else:
            peer_model(child, prune_rate)
            continue
        setattr(model, name, new)
    return model


class PerImageDataset(Dataset):
    """uint8 (N, C, H, W) images augmented and normalized one at a time, as torchvision transforms do."""

    def __init__(self, images: Tensor, labels: Tensor, mean, std, augment: bool = True):
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.augment:
            h, w = img.shape[1:]
            padded = F.pad(img, (4, 4, 4, 4))
            top, left = random.randint(0, 8), random.randint(0, 8)
            img = padded[:, top : top + h, left : left + w]
            if random.random() < 0.5:
                img = img.flip(2)
        return (img.float() / 255 - self.mean) / self.std, int(self.labels[i])


def peer_loader(ds, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(PerImageDataset(ds.train_x, ds.train_y, ds.mean, ds.std), batch_size=batch_size, shuffle=True,
                      num_workers=workers, persistent_workers=workers > 0, drop_last=True)
