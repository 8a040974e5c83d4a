"""MNIST from the official IDX files (raw or gzip), downloaded when missing."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
from pathlib import Path

import numpy as np

from supermask.errors import ConfigError

from .base import Dataset, _Arrays, _one_line
from .cache import _fingerprint, _memo_load, register_reader
from .download import download_file

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


register_reader("mnist", lambda path, name: _read_mnist(path), disk_cache=False)
