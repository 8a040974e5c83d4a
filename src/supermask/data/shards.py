"""WebDataset tar shards as a streamed image source, for clusters and object stores.

A shard is a tar of samples ``<key>.jpg`` (or ``.jpeg``, ``.png``) plus ``<key>.cls``, the label as ASCII digits,
webdataset's convention; other files of a sample are ignored. Shards are named by a brace pattern
(``/data/train-{000000..000146}.tar``), several patterns joined by ``::``, or a list; each is a local path or
anything webdataset opens (``https://...``, ``pipe:CMD``). Local shards are checked to exist when the source is made.

Each epoch reads every shard once. Training: the shard list is permuted by (data_seed, epoch); process `rank` of a
torchrun of `world` processes takes shards rank, rank + world, ... of it, and DataLoader worker w of W takes every
W-th of those, so the readers' parts are disjoint and together the whole set. Fewer shards than world * W readers is
refused (a reader would get none and a process could wait forever for it); make more, smaller shards. Parts hold
whole shards, so processes may see up to a shard's worth of samples more than each other: a DistributedDataParallel
loop must stop every process after the same number of batches (`process_samples` counts each process's samples).
Samples then pass through a shuffle buffer seeded by (data_seed, epoch, rank, worker), and each sample's
RandomResizedCrop and flip are drawn from (data_seed, epoch, its key), so the order depends on the seed, the epoch,
world and W, and an image's augmentation on the seed, the epoch and its key only. Without shuffling (evaluation) the
shards are read in order, split alike.

A sample without ``cls`` or without an image is an error naming the shard and key; a shard that is missing or not
a tar is an error naming it; an image that does not decode is logged on stderr, naming the shard and key, counted
(see `stream.replaced_tally`), and the next decodable image of the same reader takes its place (the last one, at the reader's end), so every reader yields
exactly as many samples as its shards hold: a data-parallel loop can count its steps from the tar headers, and a
resumed epoch skips samples without decoding them. 16 undecodable images in a row raise instead.

For a run (`shard_dataset`), a stream yields batches: each reader collates its own samples in batches of
`batch_size` (its last one short), and may hand its first `skip[reader]` batches over empty and undecoded.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from supermask.errors import ConfigError

try:
    import webdataset as wds
except ImportError:  # an optional extra: say how to get it, in one line
    raise ConfigError("WebDataset shards need the webdataset package: pip install 'supermask[stream]'") from None

from .base import _one_line
from .stream import collate_images, count_replaced
from .transforms import eval_transform, sample_rng, train_transform

IMAGE_KEYS = ("jpg", "jpeg", "png")
_MAX_BAD_IN_A_ROW = 16
_BAD_IMAGE = (OSError, ValueError, EOFError, Image.DecompressionBombError, SyntaxError)


def expand_shards(shards: str | list[str]) -> list[str]:
    """The shard URLs of a brace pattern (``::`` joins several) or a list; local files must exist."""
    urls = wds.shardlists.expand_urls(shards) if isinstance(shards, str) else [str(s) for s in shards]
    if not urls or any(not u for u in urls):
        raise ConfigError(f"no shards in {shards!r}; expected a pattern such as train-{{000000..000009}}.tar")
    for url in urls:
        path = _local_path(url)
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: no such shard file")
    return urls


def _local_path(url: str) -> Path | None:
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # a one-letter scheme is a Windows drive
        return Path(urlparse(url).path if scheme == "file" else url)
    return None


def count_samples(url: str) -> int:
    """The samples (keys with an image) of one local shard, from its tar headers alone: the data is seeked over, so
    counting an ImageNet shard of 1 GB reads about 8 MB."""
    return len(_scan(url, labels=False))


def shard_labels(url: str) -> np.ndarray:
    """The labels (int64) of one local shard's samples in the order they are stored, read from the tar headers and
    the small ``cls`` members only; a sample with an image but no readable label is an error naming it."""
    keys = _scan(url, labels=True)
    return np.array(list(keys.values()), dtype=np.int64)


def _scan(url: str, *, labels: bool) -> dict[str, int | None]:
    """The keys with an image of a local shard, in order, with their labels when `labels`."""
    path = _local_path(url)
    if path is None:
        raise ConfigError(f"{url}: only local shards can be counted without reading them")
    images: dict[str, int | None] = {}
    found: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                key, ext = wds.tariterators.base_plus_ext(m.name)  # split as the reader splits (at the first dot)
                if not m.isfile() or ext is None:
                    continue
                if ext.lower() in IMAGE_KEYS:
                    images[key] = None
                elif labels and ext == "cls":
                    found[key] = _label(url, key, tar.extractfile(m).read())
    except (OSError, tarfile.TarError) as e:
        raise ConfigError(f"{url}: cannot read shard ({_one_line(e)})") from None
    if labels:
        missing = next((k for k in images if k not in found), None)
        if missing is not None:
            raise ConfigError(f"{url}: sample {missing!r} has no cls (the label)")
        images = {k: found[k] for k in images}
    return images


def _label(url: str, key: str, cls: bytes) -> int:
    try:
        return int(cls)
    except ValueError:
        raise ConfigError(f"{url}: sample {key!r}: cls is {cls[:20]!r}, not an integer label") from None


def _key_index(key: str) -> int:
    """A sample's key as a number for sample_rng: the same wherever the sample is read."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _parts(items: list[str], part: int, parts: int, what: str) -> list[str]:
    if len(items) < parts:
        raise ConfigError(f"{len(items)} shards cannot be split among {what}: every reader needs at least one;"
                          " write more, smaller shards or use fewer workers")
    return items[part::parts]


def _samples(url: str) -> Iterator[dict]:
    """The raw samples (dicts of bytes by extension) of one shard; an unreadable shard is a ConfigError naming it."""
    try:
        yield from wds.tarfile_samples([{"url": url}])
    except (OSError, tarfile.TarError, ValueError) as e:  # webdataset appends the stream and url to args
        reason = e.args[0] if e.args else e
        raise ConfigError(f"{url}: cannot read shard ({_one_line(reason)})") from None


class ShardStream(torch.utils.data.IterableDataset):
    """An iterable dataset over shards: (uint8 (3, size, size) image, label) pairs of one epoch (`set_epoch`), or
    with `batch_size` each reader's collated batches of that many (see `skip`).

    `shuffle` permutes the shards and passes the samples through the shuffle buffer (training); `augment` draws a
    RandomResizedCrop + flip (training), else resize and center crop. `rank` and `world` are the process's place in
    a torchrun; DataLoader workers are found with get_worker_info. `counts` (samples per shard URL) spares
    `process_samples` reading the headers again. `skip[w]`: how many of reader w's first batches to hand over
    empty, their samples read but not decoded (resuming inside an epoch). `tally` counts the samples whose image was
    replaced (see `stream.replaced_tally`).
    """

    def __init__(
        self, shards: str | list[str], image_size: int, *, shuffle: bool, augment: bool, seed: int = 0, rank: int = 0,
        world: int = 1, shuffle_buffer: int = 1000, counts: dict[str, int] | None = None,
        batch_size: int | None = None, skip: Sequence[int] = (), tally: torch.Tensor | None = None,
    ):
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        if not 0 <= rank < world:
            raise ConfigError(f"rank must be in [0, {world}), got {rank}")
        if seed < 0 or shuffle_buffer < 1:
            raise ConfigError(f"seed must be >= 0 and shuffle_buffer >= 1, got {seed} and {shuffle_buffer}")
        if (batch_size is not None and batch_size < 1) or any(k < 0 for k in skip):
            raise ConfigError(f"batch_size must be >= 1 and skip >= 0, got {batch_size} and {list(skip)}")
        self.urls = expand_shards(shards)
        _parts(self.urls, rank, world, f"{world} processes")
        self.image_size, self.shuffle, self.augment, self.seed = image_size, shuffle, augment, seed
        self.rank, self.world = rank, world
        self.shuffle_buffer, self.epoch = shuffle_buffer, 0
        self._counts = counts
        self.batch_size, self.skip = batch_size, tuple(skip)
        self.tally = tally

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def _epoch_order(self) -> list[str]:
        if not self.shuffle:
            return self.urls
        order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(len(self.urls))
        return [self.urls[i] for i in order]

    def reader_shards(self, worker: int = 0, workers: int = 1) -> list[str]:
        """The shards that this process's DataLoader worker `worker` of `workers` reads this epoch, in order."""
        mine = _parts(self._epoch_order(), self.rank, self.world, f"{self.world} processes")
        each = f" in each of {self.world} processes" if self.world > 1 else ""
        return _parts(mine, worker, workers, f"{workers} DataLoader workers{each}")

    def process_samples(self) -> list[int]:
        """How many samples each process of the torchrun reads this epoch (local shards only, see count_samples;
        counted once). A DistributedDataParallel loop takes min(...) // batch steps on every process."""
        if self._counts is None:
            self._counts = {url: count_samples(url) for url in self.urls}
        order = self._epoch_order()
        return [sum(self._counts[u] for u in order[rank :: self.world]) for rank in range(self.world)]

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int] | None:
        url, key = sample["__url__"], sample["__key__"]
        ext = next((e for e in IMAGE_KEYS if e in sample), None)
        if ext is None or "cls" not in sample:
            found = ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "nothing"
            need = "cls (the label)" if ext is not None else "image (jpg, jpeg or png)"
            raise ConfigError(f"{url}: sample {key!r} has no {need}; it has {found}")
        label = _label(url, key, sample["cls"])
        rng = sample_rng(self.seed, self.epoch, _key_index(key)) if self.augment else None
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                x = eval_transform(img, self.image_size) if rng is None else train_transform(img, self.image_size, rng)
            return x, label
        except _BAD_IMAGE as e:
            print(f"supermask: warning: skipping {url}: {key}.{ext}, an image that cannot be decoded ({_one_line(e)});"
                  " the next one takes its place", file=sys.stderr, flush=True)
            return None

    def _raw(self, worker: int, workers: int) -> Iterator[dict]:
        """Reader `worker`'s encoded samples of the epoch, in the order it yields them."""
        samples: Iterator[dict] = (s for url in self.reader_shards(worker, workers) for s in _samples(url))
        if self.shuffle:
            seed = np.random.SeedSequence([self.seed, self.epoch, self.rank, worker]).generate_state(1)[0]
            samples = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=random.Random(int(seed)))(samples)
        return samples

    def _decoded(self, samples: Iterator[dict]) -> Iterator[tuple[torch.Tensor, int]]:
        """The samples decoded (after the shuffle: the buffer holds encoded images, not pixels), one out per sample in:
        an undecodable image is replaced by the next decodable one (the previous one at the end)."""
        bad, last = 0, None
        for sample in samples:
            item = self._decode(sample)
            if item is None:
                bad += 1
                if bad >= _MAX_BAD_IN_A_ROW:
                    raise ConfigError(f"{sample['__url__']}: {bad} images in a row cannot be decoded, the last"
                                      f" {sample['__key__']!r}; is the data intact?")
                continue
            count_replaced(self.tally, bad)
            for _ in range(bad + 1):
                yield item
            bad, last = 0, item
        if bad and last is None:
            raise ConfigError(f"no image of {', '.join(self.urls)} can be decoded")
        count_replaced(self.tally, bad)
        for _ in range(bad):
            yield last

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        samples = self._raw(worker, workers)
        if self.batch_size is None:
            yield from self._decoded(samples)
            return
        for _ in range(self.skip[worker] if worker < len(self.skip) else 0):
            if sum(1 for _ in itertools.islice(samples, self.batch_size)) == 0:  # read through, not decoded
                return
            yield self.collate([])
        decoded = self._decoded(samples)
        while batch := list(itertools.islice(decoded, self.batch_size)):
            yield self.collate(batch)

    def collate(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (B, 3, size, size), int64 (B,)); B may be 0 (a skipped batch)."""
        return collate_images(samples, self.image_size)


def shard_loader(
    stream: ShardStream, batch_size: int, *, epoch: int = 0, num_workers: int = 0, drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of (uint8 images, int64 labels) batches of one epoch of `stream`, decoded in `num_workers`
    worker processes (0: in this process). Each worker makes its own batches, so each may end with a short one."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    stream.set_epoch(epoch)
    stream.reader_shards(0, max(1, num_workers))  # refuse too few shards here, before any worker starts
    return torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                                       collate_fn=stream.collate, drop_last=drop_last, pin_memory=pin_memory)
