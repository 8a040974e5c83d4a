"""A folder of WebDataset shards as the data a run reads: `dataset=DIR` where DIR holds ``train-*.tar`` and
``val-*.tar`` (else ``test-*.tar``), as `imagenet_like` writes them to ``OUT/shards``.

Shards give each torchrun process its own stream (see `shards`), unlike folders and in-memory sets, whose global
batches are drawn whole and sliced. So here each process reads batches of batch_size / world samples from its
shards, and every process takes the same number of steps in an epoch: the smallest process part (counted from the
tar headers when the set is opened) divided by its batch. The rest of each part is left for that epoch; a later
epoch permutes the shards again, so another part comes up short. The evaluation split is read whole: process r
evaluates shards r, r + world, ...

Resuming inside an epoch at batch k: each DataLoader worker yields its own batches, which the DataLoader takes in
turn (round robin over the workers that still have some), and this process cuts the stream into batches of its
size. `resume_plan` replays that order from the workers' sample counts, so the workers hand the batches before k
over empty and undecoded, and the resumed run sees exactly the batches the run never killed would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from supermask.errors import ConfigError

from .base import split_sha256
from .stream import IMAGENET_MEAN, IMAGENET_STD, file_digests

EVAL_SPLITS = ("val", "test")


def _shards():
    """The shard reader, imported when shards are read: it needs the optional webdataset package, and the type
    ShardDataset must be importable without it."""
    from . import shards

    return shards


def find_shard_files(root: Path) -> tuple[list[str], list[str]] | None:
    """(training shards, evaluation shards) of folder `root`, sorted, or None when it holds no train-*.tar."""
    train = sorted(p for p in root.glob("train-*.tar") if p.is_file())
    if not train:
        return None
    for split in EVAL_SPLITS:
        evaluation = sorted(p for p in root.glob(f"{split}-*.tar") if p.is_file())
        if evaluation:
            return [str(p) for p in train], [str(p) for p in evaluation]
    raise ConfigError(f"{root}: training shards train-*.tar but no val-*.tar or test-*.tar to evaluate on")


@dataclass(frozen=True, eq=False, repr=False)
class ShardDataset:
    """Shards read lazily, with the attributes of an in-memory Dataset a run reads; the labels of every shard are
    read when it is opened (tar headers and the small cls files), to count the samples and the classes. What is
    derived from the labels is computed once (cached_property): a run asks for it every epoch."""

    name: str
    train_shards: tuple[str, ...]
    test_shards: tuple[str, ...]
    labels: dict[str, np.ndarray]  # shard -> its samples' labels, in order
    image_size: int
    source: str
    num_workers: int = 0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: bool = True
    vocab_size: int = 0

    @property
    def tokens(self) -> bool:
        return False

    @property
    def in_channels(self) -> int:
        return 3

    @cached_property
    def num_classes(self) -> int:
        return 1 + max(int(y.max()) for y in self.labels.values() if len(y))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.num_classes))

    @cached_property
    def counts(self) -> dict[str, int]:
        return {url: len(y) for url, y in self.labels.items()}

    @cached_property
    def train_y(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([self.labels[u] for u in self.train_shards]))

    @cached_property
    def test_y(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([self.labels[u] for u in self.test_shards]))

    def split_sha256(self, split: str) -> str:
        """SHA-256 of one split's shards ("train" or "test", the evaluation split): each shard's file name, labels
        and bytes, in order (every shard is read once more, by a few threads, as for a streamed folder)."""
        shards = self.train_shards if split == "train" else self.test_shards
        h = hashlib.sha256(f"{len(shards)}\0".encode())
        for url, digest in zip(shards, file_digests(shards)):
            h.update(f"{Path(url).name}\0{len(self.labels[url])}\0".encode())
            h.update(self.labels[url].tobytes())
            h.update(digest)
        return h.hexdigest()

    def content_sha256(self) -> str:
        """SHA-256 of both splits' checksums (`split_sha256`)."""
        return hashlib.sha256(f"{split_sha256(self, 'train')}\0{split_sha256(self, 'test')}".encode()).hexdigest()

    def __repr__(self) -> str:
        return (f"ShardDataset(name={self.name!r}, train={len(self.train_y)} in {len(self.train_shards)} shards, "
                f"test={len(self.test_y)}, image_size={self.image_size}, classes={self.num_classes}, "
                f"source={self.source!r})")


def load_shards(root: Path, name: str, *, image_size: int, num_workers: int) -> ShardDataset:
    """The shard folder `root` (see find_shard_files) as a ShardDataset."""
    found = find_shard_files(root)
    if found is None:
        raise ConfigError(f"{root}: no train-*.tar shards")
    train, test = found
    labels = {url: _shards().shard_labels(url) for url in train + test}
    empty = next((url for url in train if not len(labels[url])), None)
    if empty is not None:
        raise ConfigError(f"{empty}: a training shard without images")
    if min(int(y.min()) for y in labels.values() if len(y)) < 0:
        raise ConfigError(f"{root}: negative labels; cls must be 0, 1, ... (the class index)")
    return ShardDataset(name, tuple(train), tuple(test), labels, image_size, str(root), num_workers)


def process_batch(batch_size: int, world: int) -> int:
    """Each process's share of a global batch of shards."""
    if batch_size % world:
        raise ConfigError(f"batch_size={batch_size} does not split evenly among {world} processes; shards give each "
                          f"process batch_size / {world} samples a step, so choose a multiple of {world}")
    return batch_size // world


def _train_stream(ds: ShardDataset, *, seed: int, epoch: int, augment: bool, rank: int = 0,
                  world: int = 1, tally: torch.Tensor | None = None):
    stream = _shards().ShardStream(list(ds.train_shards), ds.image_size, shuffle=True, augment=augment, seed=seed,
                                   rank=rank, world=world, counts=ds.counts, tally=tally)
    stream.set_epoch(epoch)
    return stream


def shard_steps(ds: ShardDataset, batch_size: int, *, seed: int, epoch: int, world: int = 1) -> int:
    """Steps of training epoch `epoch`: the same on every process (the smallest part's full batches)."""
    parts = _train_stream(ds, seed=seed, epoch=epoch, augment=False, world=world).process_samples()
    steps = min(parts) // process_batch(batch_size, world)
    if steps == 0:
        raise ConfigError(f"batch_size={batch_size} is larger than a process's part of {ds.name} ({min(parts)} samples"
                          f" on {world} process(es)); choose a smaller batch_size")
    return steps


def readers(ds: ShardDataset, shards: int) -> int:
    """DataLoader workers for a process's `shards` shards: num_workers, but no more than there are shards."""
    return min(ds.num_workers, shards)


def round_robin(reader_counts: list[int], batch: int) -> Iterator[tuple[int, int]]:
    """(reader, samples) of each batch a DataLoader yields when reader w yields its reader_counts[w] samples as
    batches of `batch` (its last short) and the DataLoader takes them in turn, passing over finished readers."""
    left = list(reader_counts)
    while any(left):
        for w, n in enumerate(left):
            if n:
                take = min(n, batch)
                left[w] -= take
                yield w, take


def resume_plan(reader_counts: list[int], batch: int, skip_samples: int) -> tuple[list[int], int]:
    """How to start a process's stream after its first `skip_samples` samples: (batches each reader hands over
    empty, samples to drop from the first batch that is not empty)."""
    skips, seen = [0] * len(reader_counts), 0
    for w, n in round_robin(reader_counts, batch):
        if seen + n > skip_samples:
            break
        skips[w] += 1
        seen += n
    return skips, skip_samples - seen


def rebatch(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], size: int, count: int, *,
            drop: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The samples of `batches`, after the first `drop`, as `count` batches of exactly `size` (the rest is left)."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held, made = 0, 0
    for x, y in batches:
        cut = min(drop, len(y))
        x, y, drop = x[cut:], y[cut:], drop - cut
        if not len(y):
            continue
        xs.append(x)
        ys.append(y)
        held += len(y)
        while held >= size and made < count:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            made += 1
            xs, ys, held = [x_all[size:]], [y_all[size:]], held - size
        if made == count:  # before the next read: the DataLoader may stop here
            return
    if made < count:
        raise ConfigError(f"the shards ran out after {made} of {count} batches; were they changed during the run?")


def shard_train_loader(ds: ShardDataset, batch_size: int, *, seed: int, epoch: int, augment: bool, rank: int = 0,
                       world: int = 1, start_batch: int = 0, pin_memory: bool = False,
                       tally: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Process `rank`'s uint8 batches of training epoch `epoch`, from batch `start_batch` on: shard_steps of them,
    each batch_size / world samples (replaced ones counted in `tally`, see `stream.replaced_tally`)."""
    b = process_batch(batch_size, world)
    steps = shard_steps(ds, batch_size, seed=seed, epoch=epoch, world=world)
    if start_batch >= steps:
        return
    stream = _train_stream(ds, seed=seed, epoch=epoch, augment=augment, rank=rank, world=world, tally=tally)
    workers = readers(ds, len(stream.reader_shards()))
    counts = ds.counts
    reader_counts = [sum(counts[u] for u in stream.reader_shards(w, max(1, workers))) for w in range(max(1, workers))]
    skip, drop = resume_plan(reader_counts, b, start_batch * b)
    stream.batch_size, stream.skip = b, tuple(skip)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory)
    yield from rebatch(loader, b, steps - start_batch, drop=drop)


def shard_eval_loader(ds: ShardDataset, batch_size: int, *, split: str = "test", rank: int = 0, world: int = 1,
                      pin_memory: bool = False,
                      tally: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Process `rank`'s uint8 batches of a split, in order, resized and center-cropped: shards rank, rank + world,
    ... (a process without one reads nothing)."""
    mine = list(ds.train_shards if split == "train" else ds.test_shards)[rank::world]
    if not mine:
        return
    stream = _shards().ShardStream(mine, ds.image_size, shuffle=False, augment=False, counts=ds.counts,
                                   batch_size=batch_size, tally=tally)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=readers(ds, len(mine)),
                                         pin_memory=pin_memory)
    for x, y in loader:  # each worker's batches, its last one short
        yield x, y
