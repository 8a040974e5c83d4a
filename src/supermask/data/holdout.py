"""Training images held out of a run: the published IteRand and Gem-Miner code train on 45,000 of CIFAR-10's 50,000.

The split is the one `torch.utils.data.random_split(train, [n - count, count], generator)` makes with a generator seeded
`seed`: a permutation of the n training images, its first n - count trained on and the rest held out. IteRand's code
seeds it 777 (`SupervisedLearning._get_datasets`).
"""

from __future__ import annotations

import dataclasses

import torch

from supermask.data.base import Dataset
from supermask.errors import ConfigError


def hold_out(ds: Dataset, count: int, seed: int) -> tuple[Dataset, Dataset]:
    """(the set without `count` of its training images, those images as a set whose test split they are)."""
    if not isinstance(ds, Dataset):
        raise ConfigError(f"holdout={count} splits a training set held in memory; {ds.name} is streamed")
    n = len(ds.train_y)
    if not 0 < count < n:
        raise ConfigError(f"holdout={count} must leave training images: {ds.name} has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kept, held = order[: n - count], order[n - count:]
    return (dataclasses.replace(ds, train_x=ds.train_x[kept], train_y=ds.train_y[kept]),
            dataclasses.replace(ds, test_x=ds.train_x[held], test_y=ds.train_y[held]))
