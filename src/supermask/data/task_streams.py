"""Task streams: a sequence of tasks built from one dataset, for per-task masks over one random network (SupSup).

- ``permuted-mnist``: task t shows MNIST with its pixels shuffled by a fixed permutation drawn from seed t; task 0 is
  MNIST itself (the identity). The labels are the digits in every task.
- ``split-cifar10``: task t holds CIFAR-10's classes 2t and 2t + 1 (in the official class order), labelled 0 and 1,
  so 5 tasks of 2 classes.

A task's dataset is an ordinary `Dataset` (`task_dataset`), so each task trains as an ordinary run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from supermask.data.base import Dataset
from supermask.errors import ConfigError

TASK_STREAMS = ("permuted-mnist", "split-cifar10")
BASE_DATASET = {"permuted-mnist": "mnist", "split-cifar10": "cifar10"}
SPLIT_CLASSES = 2  # classes per task of a split stream


def stream_length(stream: str, num_classes: int) -> int | None:
    """How many tasks `stream` makes of a dataset of `num_classes` classes (None: as many as asked for)."""
    if stream == "split-cifar10":
        return num_classes // SPLIT_CLASSES
    return None


def pixel_permutation(task: int, pixels: int) -> np.ndarray:
    """Task `task`'s order of `pixels` pixel positions: the identity for task 0, else a permutation drawn from the
    seed `task` (numpy's PCG64, which gives the same permutation in every numpy version)."""
    if task == 0:
        return np.arange(pixels)
    return np.random.default_rng(task).permutation(pixels)


def permuted(ds: Dataset, task: int) -> Dataset:
    """`ds` with each image's pixels (every channel alike) in task `task`'s order."""
    n, c, h, w = ds.train_x.shape
    order = torch.from_numpy(pixel_permutation(task, h * w))

    def shuffle(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), c, h * w)[:, :, order].reshape(len(x), c, h, w).contiguous()

    return dataclasses.replace(ds, name=f"{ds.name}-permuted-{task}", train_x=shuffle(ds.train_x),
                               test_x=shuffle(ds.test_x), augment=False)  # a crop or flip would undo the shuffle


def split(ds: Dataset, task: int) -> Dataset:
    """The images of `ds`'s classes SPLIT_CLASSES * task and the next ones, relabelled from 0."""
    first = SPLIT_CLASSES * task
    keep = range(first, first + SPLIT_CLASSES)

    def part(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = (y >= first) & (y < first + SPLIT_CLASSES)
        return x[chosen].contiguous(), (y[chosen] - first).contiguous()

    train_x, train_y = part(ds.train_x, ds.train_y)
    test_x, test_y = part(ds.test_x, ds.test_y)
    return dataclasses.replace(ds, name=f"{ds.name}-split-{task}", train_x=train_x, train_y=train_y, test_x=test_x,
                               test_y=test_y, classes=tuple(ds.classes[c] for c in keep))


def task_dataset(stream: str, ds: Dataset, task: int) -> Dataset:
    """Task `task` (0-based) of `stream` over the dataset `ds`."""
    if stream not in TASK_STREAMS:
        raise ConfigError(f"unknown task_stream {stream!r}: expected one of {', '.join(TASK_STREAMS)}")
    if not isinstance(ds, Dataset) or ds.tokens:
        raise ConfigError(f"task_stream={stream} needs images held in memory, not {ds.name}")
    length = stream_length(stream, ds.num_classes)
    if task < 0 or (length is not None and task >= length):
        raise ConfigError(f"task {task} is outside task_stream={stream}, whose tasks are 0 to {length - 1}")
    return permuted(ds, task) if stream == "permuted-mnist" else split(ds, task)
