"""`load_dataset`: a dataset by name or by path, dispatched to its source module."""

from __future__ import annotations

import os
from pathlib import Path

from supermask.errors import ConfigError

from .base import DATASET_NAMES, Dataset, _folder_name, _is_tarball, _require_dir, default_data_dir
from .cifar import _CIFAR, _load_cifar
from .folder import _load_folder
from .generated import _load_digits, _load_listops
from .mnist import _load_mnist


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
