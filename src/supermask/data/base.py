"""The Dataset type, its content hash, default locations and the helpers every source shares."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from supermask.errors import ConfigError

DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100", "listops", "imagenet")
_SPLITS = ("train", "test")


# Fixed normalization constants of the named datasets (so every copy of them is normalized alike).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
}

# Class counts of the named datasets, checked whatever copy of them is read.
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split held in memory as uint8 NCHW tensors; treat the tensors as read-only.

    Token data (``vocab_size > 0``) is int64 (N, length) instead, 0 being padding: it is neither augmented nor
    normalized, and reports its vocabulary size as ``in_channels`` (a token is a one-hot vector of that many
    channels) and its sequence length as ``image_size``, the two numbers a model is built from.

    Instances are shared between ``load_dataset`` calls in one process, so mutating them in place
    would leak into later loads.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    augment: bool
    vocab_size: int = 0

    @property
    def tokens(self) -> bool:
        return self.vocab_size > 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.vocab_size if self.tokens else int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1 if self.tokens else 2])

    @property
    def seq_len(self) -> int:
        """The length of a token sequence (token data only)."""
        return int(self.train_x.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"shape={tuple(self.train_x.shape[1:])}, classes={self.num_classes}, source={self.source!r})"
        )


@functools.lru_cache(maxsize=4)
def content_sha256(ds: Dataset) -> str:
    """SHA-256 of the decoded data (shapes, images and labels of both splits): equal exactly when two runs saw the
    same data, whatever file or folder it was read from. Results record it instead of a machine's path. A streamed
    set (StreamDataset, ShardDataset) hashes its files instead: both splits' names, labels and file bytes."""
    if not isinstance(ds, Dataset):
        return ds.content_sha256()
    h = hashlib.sha256()
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        a = np.ascontiguousarray(t.cpu().numpy())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def split_sha256(ds, split: str) -> str:
    """SHA-256 of one split ("train" or "test") of a streamed set: its file names, labels and file bytes (each file
    is read once more, so it is computed once per set and split)."""
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    return ds.split_sha256(split)


# --------------------------------------------------------------------------------------------- #
# Locations


def default_data_dir() -> Path | None:
    """Where datasets are looked for and downloaded to: ``$SUPERMASK_DATA``, else ``~/.cache/supermask/data``.

    Returns None only when there is neither the variable nor a home directory.
    """
    env = os.environ.get("SUPERMASK_DATA")
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".cache" / "supermask" / "data"
    except RuntimeError:
        return None


def default_cache_dir() -> Path | None:
    """Where decoded arrays are cached: ``$SUPERMASK_CACHE``, else ``~/.cache/supermask``."""
    env = os.environ.get("SUPERMASK_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".cache" / "supermask"
    except RuntimeError:
        return None


def _require_dir(data_dir: Path | None, what: str, *, create: bool) -> Path:
    """Return data_dir if it exists; create it only when it is the default location and we may download."""
    if data_dir is None:
        raise ConfigError(f"{what}: no data directory; set SUPERMASK_DATA or pass data_dir=")
    if data_dir.is_dir():
        return data_dir
    if create:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            return data_dir
        except OSError as e:
            raise ConfigError(f"{what}: cannot create data directory {data_dir} ({e.strerror or e})") from None
    raise ConfigError(
        f"{what}: data directory {data_dir} does not exist; create it, or set SUPERMASK_DATA / data_dir= to an existing one"
    )


def _is_tarball(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz"))


def looks_like_path(name: str) -> bool:
    """Whether a `dataset` value names a file or folder rather than a built-in set: it has a folder part or a file
    suffix, or starts at the home or current folder (so a missing one is "not found", not an unknown name)."""
    name = name.strip()
    return "/" in name or os.sep in name or name.startswith(("~", ".")) or bool(Path(name).suffix)


def _folder_name(path: Path) -> str:
    return re.sub(r"\.(tar\.gz|tgz)$", "", path.name, flags=re.IGNORECASE)


# --------------------------------------------------------------------------------------------- #
# Building Dataset objects


@dataclass(frozen=True)
class _Arrays:
    """Decoded numpy arrays, the unit that is cached on disk."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std in [0,1] units, via a 256-bin histogram (no float copy of the data)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        m = float((hist * values).sum() / n)
        var = float((hist * (values - m) ** 2).sum() / n)
        means.append(m)
        stds.append(math.sqrt(var) if var > 0 else 1.0)  # constant images: avoid dividing by zero
    return tuple(means), tuple(stds)


def _to_dataset(name: str, arrays: _Arrays, source: str) -> Dataset:
    """Wrap arrays as tensors; named datasets get their fixed stats, others stats from the train split."""
    if name in _STATS:
        mean, std = _STATS[name]
    else:
        mean, std = _channel_stats(arrays.train_x)
    augment = name.startswith("cifar") if name in DATASET_NAMES else arrays.train_x.shape[2] >= 32

    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:
            a = a.copy()
        return torch.from_numpy(a).to(dtype)

    return Dataset(
        name=name,
        train_x=t(arrays.train_x, torch.uint8),
        train_y=t(arrays.train_y, torch.int64),
        test_x=t(arrays.test_x, torch.uint8),
        test_y=t(arrays.test_y, torch.int64),
        classes=tuple(arrays.classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        source=source,
        augment=augment,
    )


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__
