"""Decode each file-backed source once: an on-disk .npz cache of decoded arrays and an in-process memo.

Each source module registers how its kinds of files are decoded (`register_reader`), so a new format is one new
module and nothing here changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from supermask.errors import ConfigError

from .base import _NUM_CLASSES, Dataset, _Arrays, _folder_name, _to_dataset, default_cache_dir

# Bump when the .npz cache layout or decoding changes, so stale caches are ignored.
_CACHE_VERSION = 1


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
# In-process memo over all file-backed loaders

# kind -> (decode(path, name) -> arrays, whether the decoded arrays go to the disk cache); filled by the source
# modules when they are imported.
_READERS: dict[str, tuple[Callable[[Path, str], _Arrays], bool]] = {}


def register_reader(kind: str, decode: Callable[[Path, str], _Arrays], *, disk_cache: bool = True) -> None:
    """Make `_memo_load(kind, ...)` decode with `decode(path, name)`; `kind` also keys the disk cache."""
    _READERS[kind] = (decode, disk_cache)


@functools.lru_cache(maxsize=4)
def _memo_load(kind: str, name: str, source: str, fingerprint: str) -> Dataset:
    """Decode (or fetch from the disk cache) once per process; the fingerprint keys out changed files."""
    path = Path(source)
    decode, disk_cache = _READERS[kind]
    if not disk_cache:
        return _to_dataset(name, decode(path, name), source)
    arrays = _cached_arrays(kind, path, fingerprint, functools.partial(decode, path, name))
    if name in _NUM_CLASSES and len(arrays.classes) != (want := _NUM_CLASSES[name]):
        raise ConfigError(f"{source}: has {len(arrays.classes)} classes but {name} needs {want}")
    return _to_dataset(name, arrays, source)
