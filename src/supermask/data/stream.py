"""Image datasets read lazily, one file per sample, for sets too large for memory or whose images differ in size.

`index_image_folder(ROOT)` lists (file, label) pairs without decoding anything:

- ``ROOT/train/<class>/*``: the training split; the classes are its folder names, sorted, and label the evaluation
  split alike;
- ``ROOT/val/`` (else ``ROOT/test/``): the evaluation split, either in the same class folders, or flat (ImageNet's
  validation images) with a labels file: the one ``.csv``/``.txt`` file in the folder, else
  ``ROOT/LOC_val_solution.csv`` or ``ROOT/val.txt`` (``test`` for a test/ folder). Two formats are read: Kaggle's CSV
  with the header ``ImageId,PredictionString`` (ImageId is the file name without its extension, the label the first
  word of PredictionString, a class folder name such as n01751748), or lines ``file label`` (a file name with or
  without its extension; the label a class folder name or its index among the sorted classes, as in Caffe's
  val.txt). Labels of files that are not there are ignored, so a subset of the images works with the full file.

`ImageStream` decodes and transforms one sample per call in DataLoader workers; `EpochBatches` orders an epoch and
gives each process of a torchrun its part of every batch, from any batch on (`start_batch`). Order and augmentation
depend only on (data_seed, epoch) and the sample's place in the sorted listing. `StreamDataset` is what a run reads
(`load_dataset(..., mode="stream")`; `auto_stream_index` decides for mode "auto").

An image that cannot be read or decoded raises a ConfigError naming it (``skip_bad=False``), or by default is logged
once per file and process on stderr and replaced by the next readable image in index order (wrapping around), with
that image's label and the replaced sample's random augmentation, so a run stays deterministic; 16 unreadable images
in a row raise instead (a lost mount must not look like a training run). Replaced samples are counted in a tally
(`replaced_tally`) that the DataLoader workers share with the process reading the batches.

A set's checksum (`StreamDataset.split_sha256`) covers each split's file names, labels and the bytes of every file,
read once (by a few threads) when it is first asked for: the listing alone would call a folder whose images all
changed the same data.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from supermask.errors import ConfigError

from .base import _one_line, split_sha256
from .folder import _IMAGE_SUFFIXES
from .transforms import eval_transform, sample_rng, train_transform

_EVAL_SPLITS = ("val", "test")
_MAX_BAD_IN_A_ROW = 16
_BAD_IMAGE = (OSError, ValueError, EOFError, Image.DecompressionBombError)
_warned: set[str] = set()  # files already reported as unreadable by this process
_UNREADABLE = bytes(32)  # the digest a file that cannot be read at all stands for in a checksum
_HASH_CHUNK = 1 << 20


def replaced_tally(workers: int) -> torch.Tensor:
    """Counters of replaced samples in shared memory, one for this process and one per DataLoader worker (each
    adds to its own, so no two processes write one counter); their sum is a pass's count."""
    return torch.zeros(workers + 1, dtype=torch.int64).share_memory_()


def count_replaced(tally: torch.Tensor | None, n: int = 1) -> None:
    """Add `n` replaced samples to this process's or this DataLoader worker's counter of `tally`."""
    if tally is not None and n:
        info = torch.utils.data.get_worker_info()
        tally[0 if info is None else info.id + 1] += n


def file_sha256(path: str | Path) -> bytes:
    """SHA-256 digest of a file's bytes, or _UNREADABLE for a file that cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError:
        return _UNREADABLE
    return h.digest()


def file_digests(paths: Sequence[str | Path], threads: int | None = None) -> list[bytes]:
    """`file_sha256` of each path, in order, read by a few threads (hashlib releases the GIL on large updates, so
    they hash in parallel), in chunks so that a million files do not make a million futures."""
    threads = threads or min(8, os.cpu_count() or 1)
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(threads) as pool:
        return [d for digests in pool.map(_chunk_digests, chunks) for d in digests]


def _chunk_digests(paths: Sequence[str | Path]) -> list[bytes]:
    return [file_sha256(p) for p in paths]


@dataclass(frozen=True, eq=False)
class ImageList:
    """One split as parallel arrays: file paths relative to `root` (bytes, one numpy array rather than a million
    Python strings, which DataLoader workers would copy page by page as they touch their reference counts) and
    int64 labels."""

    root: Path
    files: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])


@dataclass(frozen=True, eq=False)
class StreamIndex:
    """The two splits of an image folder and their class names (label i is classes[i])."""

    train: ImageList
    test: ImageList
    classes: tuple[str, ...]


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name != "__MACOSX"


def _is_image(entry: os.DirEntry) -> bool:
    return _visible(entry) and entry.is_file() and PurePosixPath(entry.name).suffix.lower() in _IMAGE_SUFFIXES


def _subdirs(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.name for e in it if _visible(e) and e.is_dir())


def _images_in(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.name for e in it if _is_image(e))


def _image_list(root: Path, files: list[str], labels: list[int]) -> ImageList:
    encoded = np.array([os.fsencode(f) for f in files], dtype=bytes)
    return ImageList(root, encoded, np.array(labels, dtype=np.int64))


def _class_folders(root: Path, split: str, folders: list[str], label: dict[str, int]) -> ImageList:
    files, labels = [], []
    for name in folders:
        if name not in label:
            raise ConfigError(f"{root / split / name}: not a class of train/ (its class folders are the classes)")
        images = _images_in(root / split / name)
        if not images:
            suffixes = ", ".join(sorted(_IMAGE_SUFFIXES))
            raise ConfigError(f"{root / split / name}: empty class folder (no {suffixes} files)")
        files += [f"{split}/{name}/{f}" for f in images]
        labels += [label[name]] * len(images)
    return _image_list(root, files, labels)


def _stem(name: str) -> str:
    p = PurePosixPath(name)
    return p.stem if p.suffix.lower() in _IMAGE_SUFFIXES else p.name


def _labels_file(root: Path, split: str) -> Path:
    d = root / split
    with os.scandir(d) as it:
        inside = sorted(Path(e.path) for e in it
                        if _visible(e) and e.is_file() and e.name.lower().endswith((".csv", ".txt")))
    if len(inside) > 1:
        raise ConfigError(f"{d}: several labels files ({', '.join(p.name for p in inside)}); keep one")
    candidates = [*inside, root / f"LOC_{split}_solution.csv", root / f"{split}.txt"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(
            f"{d}: images without class folders need a labels file (one .csv or .txt in {split}/, or"
            f" {root / f'LOC_{split}_solution.csv'} or {root / f'{split}.txt'})"
        )
    return found


def _read_labels(path: Path, label: dict[str, int]) -> dict[str, int]:
    """File name without extension -> label index, from a Kaggle CSV or a `file label` text file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read labels file ({_one_line(e)})") from None
    csv = bool(lines) and lines[0].replace(" ", "").lower().startswith("imageid,")
    out = {}
    for n, line in enumerate(lines[1:] if csv else lines, start=2 if csv else 1):
        if not line.strip():
            continue
        if csv:
            image, _, prediction = line.partition(",")
            words = prediction.split()[:1]
        else:
            image, *words = line.split()
        if len(words) != 1:
            form = "ImageId,PredictionString" if csv else "file label"
            raise ConfigError(f"{path}:{n}: expected {form}, got {line!r}")
        name = words[0]
        if name in label:
            out[_stem(image.strip())] = label[name]
        elif name.isdigit() and int(name) < len(label):
            out[_stem(image.strip())] = int(name)
        else:
            raise ConfigError(f"{path}:{n}: label {name!r} is neither a class folder of train/ nor an index below"
                              f" {len(label)}")
    return out


def _flat_split(root: Path, split: str, label: dict[str, int]) -> ImageList:
    images = _images_in(root / split)
    if not images:
        raise ConfigError(f"{root / split}: no images and no class folders")
    labels_file = _labels_file(root, split)
    labels = _read_labels(labels_file, label)
    missing = [f for f in images if _stem(f) not in labels]
    if missing:
        raise ConfigError(f"{root / split / missing[0]}: no label in {labels_file} ({len(missing)} images have none)")
    return _image_list(root, [f"{split}/{f}" for f in images], [labels[_stem(f)] for f in images])


def index_image_folder(root: str | Path) -> StreamIndex:
    """List the images of `root` (layout in the module docstring) without opening them."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise ConfigError(f"{root}: no train/ folder; expected train/<class>/* and val/ or test/")
    classes = _subdirs(root / "train")
    if not classes:
        raise ConfigError(f"{root / 'train'}: no class folders; expected train/<class>/*")
    label = {c: i for i, c in enumerate(classes)}
    split = next((s for s in _EVAL_SPLITS if (root / s).is_dir()), None)
    if split is None:
        raise ConfigError(f"{root}: no val/ or test/ folder to evaluate on")
    train = _class_folders(root, "train", classes, label)
    folders = _subdirs(root / split)
    test = _class_folders(root, split, folders, label) if folders else _flat_split(root, split, label)
    return StreamIndex(train, test, tuple(classes))


# --------------------------------------------------------------------------------------------- #
# The dataset a run reads

DEFAULT_IMAGE_SIZE = 224
# ImageNet's channel statistics normalize every streamed set: measuring a set's own would mean decoding all of it.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# data_mode=auto streams a folder that would take more than this decoded in memory.
MEMORY_LIMIT_BYTES = 4 << 30
_SIZE_PROBES = 32


@dataclass(frozen=True, eq=False, repr=False)
class StreamDataset:
    """An image folder read lazily, with the attributes of an in-memory Dataset that a run reads (labels, classes,
    shape, normalization); `train_batches` and `eval_batches` read it through DataLoader workers."""

    name: str
    index: StreamIndex
    image_size: int
    source: str
    num_workers: int = 0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: bool = True  # RandomResizedCrop + flip unless augment=false
    vocab_size: int = 0

    @property
    def tokens(self) -> bool:
        return False

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def train_y(self) -> torch.Tensor:
        return torch.from_numpy(self.index.train.labels)

    @property
    def test_y(self) -> torch.Tensor:
        return torch.from_numpy(self.index.test.labels)

    def split_sha256(self, split: str) -> str:
        """SHA-256 of one split ("train" or "test", the evaluation split): its file names, labels and the bytes of
        each file, in the listing's order. Every file is read once more (by a few threads; for ImageNet's 150 GB,
        the reading of an epoch without its decoding), so a run asks only when it ends, and eval only for the
        evaluation split."""
        images = self.index.train if split == "train" else self.index.test
        digests = file_digests([images.path(i) for i in range(len(images))])
        h = hashlib.sha256(f"{len(images)}\0".encode())
        for name, label, digest in zip(images.files.tolist(), images.labels.tolist(), digests):
            h.update(name + b"\0" + label.to_bytes(8, "little", signed=True) + digest)
        return h.hexdigest()

    def content_sha256(self) -> str:
        """SHA-256 of both splits' checksums (`split_sha256`)."""
        return hashlib.sha256(f"{split_sha256(self, 'train')}\0{split_sha256(self, 'test')}".encode()).hexdigest()

    def __repr__(self) -> str:
        return (f"StreamDataset(name={self.name!r}, train={len(self.index.train)}, test={len(self.index.test)}, "
                f"image_size={self.image_size}, classes={self.num_classes}, source={self.source!r})")


def load_stream(root: Path, name: str, *, image_size: int | None = None, num_workers: int | None = None,
                index: StreamIndex | None = None) -> StreamDataset:
    """The image folder `root` as a StreamDataset (images `image_size` pixels square, default 224; `num_workers`
    decoding processes, default min(8, CPU cores))."""
    size, workers = stream_settings(image_size, num_workers)
    return StreamDataset(name, index or index_image_folder(root), size, str(root), workers)


def stream_settings(image_size: int | None, num_workers: int | None) -> tuple[int, int]:
    """(image size, DataLoader workers) of a streamed set: by default 224 pixels and min(8, CPU cores) workers."""
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if size < 1:
        raise ConfigError(f"image_size={size} must be >= 1")
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers={workers} must be >= 0")
    return size, workers


def auto_stream_index(root: Path) -> StreamIndex | None:
    """The index of folder `root` when data_mode=auto streams it, else None: it streams ImageNet's layout (a val/
    split), images of differing sizes (judged from the first image of up to 32 classes, reading only headers), and
    sets over MEMORY_LIMIT_BYTES decoded."""
    if not (root / "train").is_dir():
        return None  # not a layout streams read; the in-memory loader says what it expects
    try:
        index = index_image_folder(root)
    except ConfigError:
        return None
    if (root / "val").is_dir():
        return index
    firsts = np.unique(index.train.labels, return_index=True)[1][:_SIZE_PROBES]
    sizes = set()
    for i in firsts:
        try:
            with Image.open(index.train.path(int(i))) as img:
                sizes.add(img.size)
        except _BAD_IMAGE:
            continue
    if len(sizes) > 1:
        return index
    w, h = sizes.pop() if sizes else (0, 0)
    return index if (len(index.train) + len(index.test)) * 3 * w * h > MEMORY_LIMIT_BYTES else None


# --------------------------------------------------------------------------------------------- #
# Decoding one sample


def _warn_skip(path: Path, reason: object) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"supermask: warning: skipping unreadable image {path} ({_one_line(reason)}); the next image in the"
              " list takes its place", file=sys.stderr, flush=True)


class ImageStream(torch.utils.data.Dataset):
    """A map-style dataset over an ImageList: item (epoch, index) is (uint8 (3, size, size) image, label).

    With `augment`, RandomResizedCrop + flip drawn from the generator of (seed, epoch, index); without, resize and
    center crop (the epoch is then ignored). Batches come from `EpochBatches`, collated by `collate`.
    """

    def __init__(self, images: ImageList, image_size: int, *, augment: bool, seed: int = 0, skip_bad: bool = True,
                 tally: torch.Tensor | None = None):
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.images, self.image_size, self.augment = images, image_size, augment
        self.seed, self.skip_bad = seed, skip_bad
        self.tally = tally  # counts replaced samples (see replaced_tally)

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, path: Path, epoch: int, index: int) -> torch.Tensor:
        with Image.open(path) as img:
            if self.augment:
                return train_transform(img, self.image_size, sample_rng(self.seed, epoch, index))
            return eval_transform(img, self.image_size)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        n = len(self.images)
        first = self.images.path(index)
        for k in range(min(n, _MAX_BAD_IN_A_ROW)):
            j = (index + k) % n
            path = self.images.path(j)
            try:
                sample = self._decode(path, epoch, index), int(self.images.labels[j])
                count_replaced(self.tally, int(k > 0))
                return sample
            except _BAD_IMAGE as e:
                if not self.skip_bad:
                    raise ConfigError(f"{path}: cannot read image ({_one_line(e)})") from None
                _warn_skip(path, e)
        raise ConfigError(f"{first} and the {min(n, _MAX_BAD_IN_A_ROW) - 1} images after it cannot be read; is the data"
                          " still there?")

    def collate(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (B, 3, size, size), int64 (B,)); B may be 0 (a process's empty part of a short last batch)."""
        return collate_images(samples, self.image_size)


def collate_images(samples: list[tuple[torch.Tensor, int]], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) samples as (uint8 (B, 3, size, size), int64 (B,)); no samples give B = 0."""
    if not samples:
        return (torch.empty((0, 3, image_size, image_size), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    return torch.stack([x for x, _ in samples]), torch.tensor([y for _, y in samples], dtype=torch.int64)


# --------------------------------------------------------------------------------------------- #
# Order and partition


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of range(n): a function of (seed, epoch) only."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def train_batch_indices(
    n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, start_batch: int = 0,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """Process `rank`'s part of each global batch of one shuffled epoch, from global batch `start_batch` on.

    Global batch b is order[b * batch_size : (b + 1) * batch_size], split into `world` contiguous parts as
    torch.tensor_split splits (the first parts one longer), as the in-memory path does: together the processes see
    every sample once. The last global batch may be short (a part may then be empty) unless drop_last.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world}), got {rank}")
    if start_batch < 0:
        raise ConfigError(f"start_batch must be >= 0, got {start_batch}")
    order = epoch_order(n, seed, epoch)
    stop = n - n % batch_size if drop_last else n
    for start in range(start_batch * batch_size, stop, batch_size):
        yield np.array_split(order[start : start + batch_size], world)[rank]


def eval_batch_indices(n: int, batch_size: int, *, rank: int = 0, world: int = 1) -> Iterator[np.ndarray]:
    """Process `rank`'s contiguous part of range(n), in batches (as the in-memory eval_batches splits)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    part = np.array_split(np.arange(n), world)[rank]
    for start in range(0, len(part), batch_size):
        yield part[start : start + batch_size]


class EpochBatches(torch.utils.data.Sampler):
    """A DataLoader batch_sampler over an ImageStream: lists of keys (epoch, index) of this process's batches.

    With `shuffle`, `train_batch_indices` (an order drawn from (seed, epoch), from `start_batch`); without,
    `eval_batch_indices`.
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1,
        start_batch: int = 0, drop_last: bool = False,
    ):
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, epoch
        self.rank, self.world, self.start_batch, self.drop_last = rank, world, start_batch, drop_last

    def _batches(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            return train_batch_indices(self.n, self.batch_size, seed=self.seed, epoch=self.epoch, rank=self.rank,
                                       world=self.world, start_batch=self.start_batch, drop_last=self.drop_last)
        return eval_batch_indices(self.n, self.batch_size, rank=self.rank, world=self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for idx in self._batches():
            yield [(self.epoch, int(i)) for i in idx]

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(len(np.array_split(np.arange(self.n), self.world)[self.rank]) / self.batch_size)
        total = self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)
        return max(0, total - self.start_batch)


def stream_loader(
    stream: ImageStream, batch_size: int, *, shuffle: bool, epoch: int = 0, rank: int = 0, world: int = 1,
    start_batch: int = 0, num_workers: int = 0, drop_last: bool = False, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of (uint8 images, int64 labels) batches of one epoch of `stream` (see EpochBatches), decoded in
    `num_workers` worker processes (0: in this process)."""
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    sampler = EpochBatches(len(stream), batch_size, shuffle=shuffle, seed=stream.seed, epoch=epoch, rank=rank,
                           world=world, start_batch=start_batch, drop_last=drop_last)
    return torch.utils.data.DataLoader(stream, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=stream.collate, pin_memory=pin_memory)
