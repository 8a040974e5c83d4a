"""Datasets as in-memory uint8 tensors, plus deterministic batching and GPU-friendly augmentation.

Every dataset used here fits in memory (CIFAR is 180 MB as uint8), so we load it once, keep it as
uint8 and convert batches to float on the target device. That keeps the data path simple, makes an
epoch's order and augmentation a pure function of ``(seed, epoch)`` (exact resume), and avoids
DataLoader worker processes.

Sources: sklearn's bundled ``digits``; the official MNIST IDX files; the official CIFAR-10/100 python
archives (read with a restricted unpickler); or any image folder / ``.tar.gz`` laid out as
``train/<class>/*`` and ``test/<class>/*``. Decoded archives are cached as ``.npz`` files. One dataset is token
sequences, not images: ``listops``, generated from a fixed seed (see `generate_listops`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import random
import re
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from supermask.errors import ConfigError

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "augment_batch",
    "content_sha256",
    "check_augment",
    "default_cache_dir",
    "default_data_dir",
    "download_file",
    "eval_batches",
    "generate_listops",
    "load_dataset",
    "normalize",
    "parse_idx",
    "read_cifar_archive",
    "read_idx",
    "restricted_pickle_load",
    "train_batches",
]

DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100", "listops")

# Bump when the .npz cache layout or decoding changes, so stale caches are ignored.
_CACHE_VERSION = 1
_DOWNLOAD_TIMEOUT_S = 30.0
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
_SPLITS = ("train", "test")

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# md5 of the decompressed IDX files (the .gz wrappers differ between mirrors).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_IDX_MAGIC_IMAGES = 2051
_IDX_MAGIC_LABELS = 2049

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
CIFAR_MD5 = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}


@dataclass(frozen=True)
class _CifarLayout:
    """Member names and pickle keys of one official CIFAR python archive."""

    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    prefixes: tuple[str, ...]  # names of image-folder copies that count as this dataset


_CIFAR = {
    "cifar10": _CifarLayout(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        prefixes=("cifar10", "cifar-10", "cifar_10"),
    ),
    "cifar100": _CifarLayout(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        prefixes=("cifar100", "cifar-100", "cifar_100"),
    ),
}

# Fixed normalization constants of the named datasets (so every copy of them is normalized alike).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
}


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

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"shape={tuple(self.train_x.shape[1:])}, classes={self.num_classes}, source={self.source!r})"
        )


@functools.lru_cache(maxsize=4)
def content_sha256(ds: Dataset) -> str:
    """SHA-256 of the decoded data (shapes, images and labels of both splits): equal exactly when two runs saw the
    same data, whatever file or folder it was read from. Results record it instead of a machine's path."""
    h = hashlib.sha256()
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        a = np.ascontiguousarray(t.cpu().numpy())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


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


# --------------------------------------------------------------------------------------------- #
# Public entry point


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> Dataset:
    """Load a named dataset (see DATASET_NAMES) or an image folder / ``.tar.gz`` given by path.

    ``data_dir`` defaults to ``$SUPERMASK_DATA`` or ``~/.cache/supermask/data``. Repeated calls in one
    process return the same (shared) Dataset without re-reading files.
    """
    key = name.strip().lower()
    if key == "digits":
        return _load_digits()
    if key == "listops":
        return _load_listops()
    explicit = data_dir is not None or bool(os.environ.get("SUPERMASK_DATA"))
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if key == "mnist":
        return _load_mnist(_require_dir(root, "mnist", create=download and not explicit), download)
    if key in _CIFAR:
        return _load_cifar(key, _require_dir(root, key, create=download and not explicit), download)
    path = _find_path(name.strip(), root)
    if path is None:
        raise ConfigError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)} or a path to an image folder"
            " / .tar.gz with train/<class>/ and test/<class>/"
        )
    return _load_folder(path, _folder_name(path))


def _find_path(name: str, root: Path | None) -> Path | None:
    """Resolve a dataset path: absolute, else relative to data_dir, else relative to the cwd."""
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else [*([root / p] if root is not None else []), Path.cwd() / p]
    for c in candidates:
        if c.is_dir() or (c.is_file() and _is_tarball(c)):
            return c.resolve()
        if c.is_file():
            raise ConfigError(f"dataset path {c} is neither a directory nor a .tar.gz/.tgz archive")
    return None


def _is_tarball(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz"))


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


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """sklearn's 8x8 digits with a fixed stratified 80/20 split (RandomState(0), independent of user seeds)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N,1,8,8)
    y = bunch.target.astype(np.int64)
    rng = np.random.RandomState(0)
    test_idx = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[: int(round(0.2 * len(idx)))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    arrays = _Arrays(x[~is_test], y[~is_test], x[is_test], y[is_test], tuple(str(c) for c in range(10)))
    return _to_dataset("digits", arrays, "sklearn:load_digits")


# --------------------------------------------------------------------------------------------- #
# ListOps (generated token sequences)

# ListOps (Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning"; the Long Range Arena's
# ListOps task, Tay et al. 2021, is a longer variant): nested operators over digits, e.g. [MAX 2 9 [MIN 4 7 ] 0 ]
# (= 9), labelled with their value 0-9. Their generator's settings: an argument is itself an operation with
# probability 0.25, 2 to 5 arguments, depth at most 20; MED is the median rounded down (int(np.median)), SM the sum
# modulo 10. The small variant here: the root is always an operation, sequences of at most 64 tokens, no sequence
# twice, 20,000 for training and the next 2,000 for testing, all drawn from seed 0.
LISTOPS_TOKENS = ("<pad>", *(str(d) for d in range(10)), "[MAX", "[MIN", "[MED", "[SM", "]")
_LISTOPS_OPS = ("[MAX", "[MIN", "[MED", "[SM")
_LISTOPS = {"seed": 0, "train": 20_000, "test": 2_000, "max_len": 64, "max_depth": 20, "max_args": 5, "op_p": 0.25}


def listops_value(op: str, args: Sequence[int]) -> int:
    """The value of one ListOps operation over digits."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        s, n = sorted(args), len(args)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def _listops_tree(rng: random.Random, depth: int, out: list[str]) -> int:
    """Append one random expression's tokens to `out` and return its value (the root is always an operation)."""
    cfg = _LISTOPS
    if depth > 0 and (depth >= cfg["max_depth"] or rng.random() >= cfg["op_p"]):
        value = int(rng.random() * 10)
        out.append(str(value))
        return value
    op = _LISTOPS_OPS[int(rng.random() * len(_LISTOPS_OPS))]
    n_args = 2 + int(rng.random() * (cfg["max_args"] - 1))
    out.append(op)
    args = [_listops_tree(rng, depth + 1, out) for _ in range(n_args)]
    out.append("]")
    return listops_value(op, args)


def generate_listops(n: int, seed: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` distinct random expressions of at most `max_len` tokens, as int64 token ids (N, max_len) padded with
    0 at the end (ids index LISTOPS_TOKENS), and their int64 values. Only `random.Random(seed).random()` is
    drawn, whose stream Python keeps stable across versions."""
    rng = random.Random(seed)
    ids = {t: i for i, t in enumerate(LISTOPS_TOKENS)}
    x = np.zeros((n, max_len), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    seen: set[tuple[str, ...]] = set()
    while len(seen) < n:
        tokens: list[str] = []
        value = _listops_tree(rng, 0, tokens)
        if len(tokens) > max_len or tuple(tokens) in seen:
            continue
        i = len(seen)
        seen.add(tuple(tokens))
        x[i, : len(tokens)] = [ids[t] for t in tokens]
        y[i] = value
    return x, y


@functools.lru_cache(maxsize=1)
def _load_listops() -> Dataset:
    """The fixed ListOps split, generated once (a few seconds) and kept in the .npz cache."""
    cfg = _LISTOPS
    source = "generated:listops(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
    cache_dir = default_cache_dir()
    digest = hashlib.sha1(f"{source} v{_CACHE_VERSION}".encode()).hexdigest()[:24]
    file = None if cache_dir is None else cache_dir / f"listops-{digest}.npz"
    arrays = None if file is None else _read_cache(file)
    if arrays is None:
        x, y = generate_listops(cfg["train"] + cfg["test"], cfg["seed"], cfg["max_len"])
        n = cfg["train"]
        arrays = _Arrays(x[:n], y[:n], x[n:], y[n:], tuple(str(c) for c in range(10)))
        if file is not None:
            _write_cache(file, arrays)
    t = torch.from_numpy
    return Dataset(name="listops", train_x=t(arrays.train_x), train_y=t(arrays.train_y), test_x=t(arrays.test_x),
                   test_y=t(arrays.test_y), classes=arrays.classes, mean=(), std=(), source=source, augment=False,
                   vocab_size=len(LISTOPS_TOKENS))


# --------------------------------------------------------------------------------------------- #
# Files, checksums, downloads


def _md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__


def download_file(url: str, dest: str | Path, md5: str | None = None, *, timeout: float = _DOWNLOAD_TIMEOUT_S) -> Path:
    """Download url to dest atomically (temp file + rename), checking md5 first; failures raise ConfigError.

    A partial or corrupt download never appears under dest, so an interrupted run cannot leave a bad
    file that later runs would trust.
    """
    from tqdm import tqdm

    dest = Path(dest)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None, leave=False) as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
        if md5 is not None and h.hexdigest() != md5:
            raise ConfigError(f"download of {url} has md5 {h.hexdigest()}, expected {md5}; the file was discarded")
        os.replace(tmp, dest)
        tmp = None
        return dest
    except urllib.error.URLError as e:
        raise ConfigError(f"download of {url} failed: {_one_line(e.reason)}") from None
    except ConfigError:
        raise
    except (OSError, ValueError) as e:  # ValueError: malformed URL
        raise ConfigError(f"download of {url} failed: {_one_line(e)}") from None
    except http.client.HTTPException as e:  # e.g. IncompleteRead
        raise ConfigError(f"download of {url} failed: {type(e).__name__}: {_one_line(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- #
# On-disk cache of decoded arrays


def _fingerprint(path: Path) -> str:
    """Identity of a file or directory tree for cache keys: paths, sizes and mtimes (not contents)."""
    parts = [str(path.resolve())]
    if path.is_dir():
        for rel, st in sorted(_walk_stats(path)):
            parts.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    else:
        st = path.stat()
        parts.append(f"{st.st_size}\0{st.st_mtime_ns}")
    parts.append(f"v{_CACHE_VERSION}")
    return hashlib.sha1("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _walk_stats(root: Path, max_depth: int = 4) -> Iterator[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of files at most max_depth levels below root."""
    stack = [(root, "", 0)]
    while stack:
        d, rel, depth = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir():
                    if depth + 1 < max_depth:
                        stack.append((Path(e.path), r, depth + 1))
                elif e.is_file():
                    yield r, e.stat()


def _cached_arrays(kind: str, source: Path, fingerprint: str, decode: Callable[[], _Arrays]) -> _Arrays:
    """Load decoded arrays from the .npz cache, or decode and try to store them (cache errors are ignored)."""
    cache_dir = default_cache_dir()
    file = None
    if cache_dir is not None:
        digest = hashlib.sha1(f"{kind}\n{fingerprint}".encode()).hexdigest()[:24]
        file = cache_dir / f"{_folder_name(source)}-{digest}.npz"
        cached = _read_cache(file)
        if cached is not None:
            return cached
    arrays = decode()
    if file is not None:
        _write_cache(file, arrays)
    return arrays


def _read_cache(file: Path) -> _Arrays | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            return _Arrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"], tuple(str(c) for c in z["classes"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing or corrupt: decode again
        return None


def _write_cache(file: Path, arrays: _Arrays) -> None:
    tmp: str | None = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_x=arrays.train_x,
                train_y=arrays.train_y,
                test_x=arrays.test_x,
                test_y=arrays.test_y,
                classes=np.array(arrays.classes, dtype=str),
            )
        os.replace(tmp, file)
        tmp = None
    except OSError:  # read-only or full cache dir: caching is only an optimisation
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- #
# MNIST (IDX files)


def parse_idx(data: bytes, *, what: str = "IDX data") -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes (MNIST images, magic 2051, or labels, magic 2049)."""
    if len(data) < 8:
        raise ConfigError(f"{what}: too short to be an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in (_IDX_MAGIC_IMAGES, _IDX_MAGIC_LABELS):
        raise ConfigError(
            f"{what}: bad IDX magic number {magic}, expected {_IDX_MAGIC_IMAGES} (images) or {_IDX_MAGIC_LABELS} (labels)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"{what}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise ConfigError(f"{what}: IDX header says {dims} = {math.prod(dims)} bytes but {len(data) - header} follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ConfigError(f"{path}: corrupt gzip file ({_one_line(e)})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed."""
    path = Path(path)
    return parse_idx(_read_maybe_gz(path), what=str(path))


def _mnist_files_in(d: Path) -> dict[str, Path] | None:
    """The four IDX files (each raw or .gz) in directory d, or None if any is missing."""
    found = {}
    for stem in MNIST_MD5:
        hit = next((p for p in (d / stem, d / f"{stem}.gz") if p.is_file()), None)
        if hit is None:
            return None
        found[stem] = hit
    return found


def _find_mnist_dir(data_dir: Path) -> Path | None:
    """The first of data_dir/mnist, data_dir, data_dir/MNIST/raw that holds all four IDX files."""
    return next((d for d in (data_dir / "mnist", data_dir, data_dir / "MNIST" / "raw") if _mnist_files_in(d)), None)


def _load_mnist(data_dir: Path, download: bool) -> Dataset:
    directory = _find_mnist_dir(data_dir)
    if directory is None:
        hint = f"put the four MNIST IDX files (raw or .gz) in {data_dir / 'mnist'}, or set SUPERMASK_DATA / data_dir="
        if not download:
            raise ConfigError(f"mnist: no copy found in {data_dir}; {hint}")
        directory = data_dir / "mnist"
        try:
            for stem in MNIST_MD5:
                if not any((directory / n).is_file() for n in (stem, f"{stem}.gz")):
                    download_file(f"{MNIST_URL}{stem}.gz", directory / f"{stem}.gz", None)
        except ConfigError as e:
            raise ConfigError(f"mnist: no copy found in {data_dir} and download failed ({e}); {hint}") from None
    files = _mnist_files_in(directory)
    if files is None:
        raise ConfigError(f"mnist: download into {directory} did not produce the four IDX files")
    key = "\n".join(_fingerprint(p) for p in files.values())
    return _memo_load("mnist", "mnist", str(directory.resolve()), key)


def _read_mnist(directory: Path) -> _Arrays:
    """Parse and md5-check the four IDX files in directory."""
    files = _mnist_files_in(directory)
    if files is None:
        raise ConfigError(f"mnist: the IDX files in {directory} went missing")
    arrays = {}
    for stem, path in files.items():
        data = _read_maybe_gz(path)
        digest = hashlib.md5(data).hexdigest()
        if digest != MNIST_MD5[stem]:
            raise ConfigError(f"{path}: md5 of the decompressed data is {digest}, expected {MNIST_MD5[stem]}; replace the file")
        arrays[stem] = parse_idx(data, what=str(path))
    splits = []
    for prefix in ("train", "t10k"):
        x, y = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"mnist {prefix}: images {x.shape} and labels {y.shape} do not match")
        splits += [x[:, None], y.astype(np.int64)]
    return _Arrays(*splits, classes=tuple(str(c) for c in range(10)))


# --------------------------------------------------------------------------------------------- #
# CIFAR python archives (restricted unpickling)


def _numpy_reconstruct() -> object:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays, dicts, lists and bytes, and refuses every other global.

    The CIFAR batches are pickles, and a plain ``pickle.load`` of a tampered file runs arbitrary code.
    """

    def find_class(self, module: str, name: str) -> object:
        import codecs

        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles from Python 3 store bytes
            return codecs.encode
        raise ConfigError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in dataset files")


def restricted_pickle_load(data: bytes, *, what: str = "pickle") -> object:
    """Unpickle dataset batches safely (numpy arrays in dicts/lists only), with encoding='bytes'."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    except Exception as e:  # truncated/garbled pickles raise many different types
        raise ConfigError(f"{what}: not a valid pickle ({type(e).__name__}: {_one_line(e)})") from None


def _cifar_batch(obj: object, layout: _CifarLayout, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict) or b"data" not in obj or layout.label_key not in obj:
        raise ConfigError(f"{what}: expected a dict with b'data' and {layout.label_key!r}")
    x, y = obj[b"data"], np.asarray(obj[layout.label_key], dtype=np.int64)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{what}: b'data' must be a uint8 array of shape (N, 3072)")
    if y.shape != (len(x),):
        raise ConfigError(f"{what}: {len(y)} labels for {len(x)} images")
    return x.reshape(-1, 3, 32, 32), y


def _cifar_arrays(name: str, read: Callable[[str], bytes]) -> _Arrays:
    """Assemble a CIFAR split from its batch files; read(member) returns a member's raw bytes."""
    layout = _CIFAR[name]
    splits = []
    for members in (layout.train, layout.test):
        xs, ys = zip(*(_cifar_batch(restricted_pickle_load(read(m), what=m), layout, m) for m in members))
        splits += [np.concatenate(xs), np.concatenate(ys)]
    meta = restricted_pickle_load(read(layout.meta), what=layout.meta)
    if not isinstance(meta, dict) or not isinstance(meta.get(layout.names_key), list):
        raise ConfigError(f"{layout.meta}: expected a dict with a {layout.names_key!r} list")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    for y in (splits[1], splits[3]):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ConfigError(f"{name}: labels outside 0..{len(classes) - 1}")
    return _Arrays(*splits, classes=classes)


def read_cifar_archive(path: str | Path, name: str, *, md5: str | None) -> _Arrays:
    """Decode an official CIFAR python ``.tar.gz`` without extracting it; md5=None skips the checksum.

    Returns numpy arrays as attributes train_x (N,3,32,32) uint8, train_y int64, test_x, test_y, classes.
    """
    path = Path(path)
    if md5 is not None and (digest := _md5_file(path)) != md5:
        raise ConfigError(f"{path}: md5 is {digest}, expected {md5}; delete it and download it again")
    layout = _CIFAR[name]
    wanted = {*layout.train, *layout.test, layout.meta}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = PurePosixPath(m.name).parts
                if m.isfile() and len(parts) == 2 and parts[0] == layout.folder and parts[1] in wanted:
                    f = tf.extractfile(m)
                    assert f is not None
                    members[parts[1]] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"{path}: cannot read archive ({_one_line(e)})") from None
    missing = sorted(wanted - members.keys())
    if missing:
        raise ConfigError(f"{path}: missing {layout.folder}/{missing[0]}; is this the official {layout.archive}?")
    return _cifar_arrays(name, members.__getitem__)


def _read_cifar_folder(path: Path, name: str) -> _Arrays:
    def read(member: str) -> bytes:
        try:
            return (path / member).read_bytes()
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {path / member} ({e.strerror or e})") from None

    return _cifar_arrays(name, read)


def _cifar_image_folders(data_dir: Path, name: str) -> list[Path]:
    """Image-folder copies named like the dataset (cifar10*, cifar-10*), never cifar100 for cifar10."""
    layout = _CIFAR[name]
    found = []
    for p in sorted(data_dir.iterdir()):
        low = p.name.lower()
        if p.name in (layout.archive, layout.folder) or low.startswith("."):
            continue
        rest = next((low[len(pre) :] for pre in layout.prefixes if low.startswith(pre)), None)
        if rest is None or rest[:1].isdigit():  # "cifar100..." is not a cifar10 copy
            continue
        if p.is_dir() or (p.is_file() and _is_tarball(p)):
            found.append(p)
    return found


def _load_cifar(name: str, data_dir: Path, download: bool) -> Dataset:
    layout = _CIFAR[name]
    archive, folder = data_dir / layout.archive, data_dir / layout.folder
    if not archive.is_file() and not folder.is_dir():
        copies = _cifar_image_folders(data_dir, name)
        if copies:
            return _load_folder(copies[0].resolve(), name)
        hint = (
            f"put {layout.archive} (or an image folder / .tar.gz named {name}*) in {data_dir},"
            " or set SUPERMASK_DATA / data_dir="
        )
        if not download:
            raise ConfigError(f"{name}: no copy found in {data_dir}; {hint}")
        try:
            download_file(CIFAR_URLS[name], archive, CIFAR_MD5[name])
        except ConfigError as e:
            raise ConfigError(f"{name}: no copy found in {data_dir} and download failed ({e}); {hint}") from None
    source = archive if archive.is_file() else folder
    kind = "cifar-archive" if source is archive else "cifar-dir"
    return _memo_load(kind, name, str(source.resolve()), _fingerprint(source))


# --------------------------------------------------------------------------------------------- #
# Image folders (directory or .tar.gz with train/<class>/* and test/<class>/*)

_Entry = tuple[str, str, str, Path | bytes]  # split, class, file name, file path or contents


def _split_entry(parts: tuple[str, ...]) -> tuple[str, str, str, str] | None:
    """(top dir or '', split, class, file) for an image path `[top/]split/class/file`, else None."""
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if PurePosixPath(parts[-1]).suffix.lower() not in _IMAGE_SUFFIXES:
        return None
    if len(parts) == 3 and parts[0] in _SPLITS:
        return ("", *parts)
    if len(parts) == 4 and parts[1] in _SPLITS:
        return parts  # type: ignore[return-value]
    return None


def _select_top(entries: list[tuple[str, str, str, str, Path | bytes]], source: Path) -> list[_Entry]:
    """Keep entries at the root, else those under the single top-level directory."""
    tops = sorted({e[0] for e in entries})
    if not tops:
        raise ConfigError(f"{source}: no images found under train/<class>/ and test/<class>/")
    if tops[0] != "" and len(tops) > 1:
        raise ConfigError(
            f"{source}: expected train/<class>/ and test/<class>/ at the top or under one directory, found {tops[:3]}"
        )
    return [e[1:] for e in entries if e[0] == tops[0]]


def _entries_from_dir(root: Path) -> list[_Entry]:
    raw = []
    for rel, _ in _walk_stats(root):
        hit = _split_entry(PurePosixPath(rel).parts)
        if hit is not None:
            raw.append((*hit, root.joinpath(rel)))
    return _select_top(raw, root)


def _entries_from_tar(path: Path) -> list[_Entry]:
    raw = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                hit = _split_entry(PurePosixPath(m.name).parts)
                if hit is not None:
                    f = tf.extractfile(m)
                    assert f is not None
                    raw.append((*hit, f.read()))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"{path}: cannot read archive ({_one_line(e)})") from None
    return _select_top(raw, path)


def _decode_image(item: Path | bytes, what: str) -> np.ndarray:
    """HxW for grayscale images, HxWx3 for everything else."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as im:
            return np.asarray(im.convert("L" if im.mode in ("1", "L") else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f"{what}: cannot decode image ({_one_line(e)})") from None


def _decode_split(entries: list[_Entry], split: str, source: Path) -> tuple[list[np.ndarray], list[str]]:
    """Decode one split's images, ordered by (class, file name); returns images and their class names."""
    items = sorted((e for e in entries if e[0] == split), key=lambda e: (e[1], e[2]))
    return [_decode_image(item, f"{source}:{split}/{cls}/{f}") for _, cls, f, item in items], [e[1] for e in items]


def _stack_images(images: list[np.ndarray], gray: bool) -> np.ndarray:
    """HxW / HxWx3 images -> uint8 (N, C, H, W); grayscale images are repeated to RGB unless all are gray."""
    if gray:
        return np.stack(images)[:, None]
    rgb = [np.repeat(i[:, :, None], 3, axis=2) if i.ndim == 2 else i for i in images]
    return np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))


def _decode_folder(entries: list[_Entry], source: Path) -> _Arrays:
    classes = tuple(sorted({c for s, c, _, _ in entries if s == "train"}))
    test_classes = tuple(sorted({c for s, c, _, _ in entries if s == "test"}))
    if not classes:
        raise ConfigError(f"{source}: no images found under train/<class>/")
    if test_classes != classes:
        diff = sorted(set(classes) ^ set(test_classes))
        raise ConfigError(f"{source}: test/ and train/ must have the same class folders; they differ in {diff[:5]}")
    train, train_cls = _decode_split(entries, "train", source)
    test, test_cls = _decode_split(entries, "test", source)
    sizes = {img.shape[:2] for img in train + test}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4])
        raise ConfigError(f"{source}: all images must share one size, found {shown}; resize them first")
    gray = all(img.ndim == 2 for img in train + test)
    label = {c: i for i, c in enumerate(classes)}
    return _Arrays(
        _stack_images(train, gray),
        np.array([label[c] for c in train_cls], dtype=np.int64),
        _stack_images(test, gray),
        np.array([label[c] for c in test_cls], dtype=np.int64),
        classes,
    )


def _decode_folder_path(path: Path) -> _Arrays:
    return _decode_folder(_entries_from_dir(path) if path.is_dir() else _entries_from_tar(path), path)


def _load_folder(path: Path, name: str) -> Dataset:
    return _memo_load("folder", name, str(path), _fingerprint(path))


# --------------------------------------------------------------------------------------------- #
# In-process memo over all file-backed loaders


@functools.lru_cache(maxsize=4)
def _memo_load(kind: str, name: str, source: str, fingerprint: str) -> Dataset:
    """Decode (or fetch from the disk cache) once per process; the fingerprint keys out changed files."""
    path = Path(source)
    if kind == "mnist":
        return _to_dataset(name, _read_mnist(path), source)
    decoders: dict[str, Callable[[], _Arrays]] = {
        "cifar-archive": functools.partial(read_cifar_archive, path, name, md5=CIFAR_MD5.get(name)),
        "cifar-dir": functools.partial(_read_cifar_folder, path, name),
        "folder": functools.partial(_decode_folder_path, path),
    }
    arrays = _cached_arrays(kind, path, fingerprint, decoders[kind])
    if name in _CIFAR and len(arrays.classes) != (want := 10 if name == "cifar10" else 100):
        raise ConfigError(f"{source}: has {len(arrays.classes)} classes but {name} needs {want}")
    return _to_dataset(name, arrays, source)


# --------------------------------------------------------------------------------------------- #
# Batching and augmentation


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., C, H, W) in 0..255 -> float32 ((x/255) - mean) / std per channel, on x's device."""
    c = x.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"normalize: {c} channels but {len(mean)} means and {len(std)} stds")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(c, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorized over a uint8 (B,C,H,W) batch.

    Random numbers come from ``generator`` on the CPU and only then move to x's device, so a batch
    is augmented identically on every device.
    """
    if pad < 0:
        raise ConfigError(f"augment pad must be >= 0, got {pad}")
    b, c, h, w = x.shape
    out = x
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(flipped, out.flip(3), out)
    return out.contiguous()


def check_augment(ds: Dataset, augment: bool | None) -> None:
    """Augmentation crops and flips images: refuse it for token data."""
    if augment and ds.tokens:
        raise ConfigError(f"augment=true crops and flips images; dataset {ds.name} is token sequences (use augment=false)")


def _inputs(ds: Dataset, x: torch.Tensor) -> torch.Tensor:
    """What the model reads: normalized float images, or the token ids themselves."""
    return x if ds.tokens else normalize(x, ds.mean, ds.std)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch): shuffling + augmentation of one epoch."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def on_device(ds: Dataset, device: torch.device | str, *, budget: float = 0.5) -> Dataset:
    """`ds` with its uint8 tensors resident on a GPU when they take at most `budget` of its free memory, so batches
    are drawn and augmented there without host-to-device copies; otherwise (and on CPUs) `ds` itself."""
    device = torch.device(device)
    if device.type != "cuda" or ds.train_x.device == device:
        return ds
    size = sum(t.numel() * t.element_size() for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y))
    free, _ = torch.cuda.mem_get_info(device)
    if size > budget * free:
        return ds
    return replace(ds, train_x=ds.train_x.to(device), train_y=ds.train_y.to(device), test_x=ds.test_x.to(device),
                   test_y=ds.test_y.to(device))


def _part(t: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Process `rank`'s contiguous part of `t` when it is split among `world` processes."""
    rank, world = shard
    return torch.tensor_split(t, world)[rank] if world > 1 else t


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def train_batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    augment: bool,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float32 normalized images, int64 labels) on device; the last batch may be short.

    Order and augmentation depend only on (seed, epoch), so resuming at an epoch reproduces it exactly.
    With shard=(rank, world), each global batch is drawn and augmented whole, and this process gets its
    contiguous slice (data-parallel training sees exactly the batches of a single process).
    """
    _check_batch_size(batch_size)
    check_augment(ds, augment)
    gen = _epoch_generator(seed, epoch)
    order = torch.randperm(len(ds.train_y), generator=gen)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].to(ds.train_x.device)
        x = ds.train_x.index_select(0, idx).to(device, non_blocking=True)
        y = ds.train_y.index_select(0, idx).to(device, non_blocking=True)
        if augment:
            x = augment_batch(x, gen)
        yield _inputs(ds, _part(x, shard)), _part(y, shard)


def eval_batches(
    ds: Dataset, batch_size: int, *, split: str = "test", device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train or test split in order, normalized, without augmentation (with shard=(rank, world): this
    process's contiguous part of it)."""
    _check_batch_size(batch_size)
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    xs, ys = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    xs, ys = _part(xs, shard), _part(ys, shard)
    for start in range(0, len(ys), batch_size):
        x = xs[start : start + batch_size].to(device, non_blocking=True)
        y = ys[start : start + batch_size].to(device, non_blocking=True)
        yield _inputs(ds, x), y
