"""`load_dataset`: a dataset by name or by path, dispatched to its source module."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from supermask.errors import ConfigError

from .base import DATASET_NAMES, Dataset, _folder_name, _is_tarball, _require_dir, default_data_dir, looks_like_path
from .cifar import _CIFAR, _load_cifar
from .folder import _IMAGE_SUFFIXES, _load_folder
from .generated import _load_digits, _load_listops
from .imagenet import find_imagenet
from .mnist import _load_mnist
from .shard_dataset import ShardDataset, find_shard_files, load_shards
from .stream import (IMAGENET_MEAN, IMAGENET_STD, StreamDataset, auto_stream_index, index_image_folder, load_stream,
                     stream_settings)

DATA_MODES = ("memory", "stream", "auto")


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True, mode: str = "memory",
    image_size: int | None = None, num_workers: int | None = None,
) -> Dataset | StreamDataset | ShardDataset:
    """Load a named dataset (see DATASET_NAMES), an image folder / ``.tar.gz`` or a folder of WebDataset shards
    (``train-*.tar`` and ``val-*.tar`` or ``test-*.tar``, see `shard_dataset`) given by path.

    ``data_dir`` defaults to ``$SUPERMASK_DATA`` or ``~/.cache/supermask/data``. Repeated calls in one
    process return the same (shared) Dataset without re-reading files (a streamed folder is listed again).

    ``mode``: ``memory`` decodes the whole set into a Dataset; ``stream`` reads an image folder lazily (a
    StreamDataset of ``image_size``-pixel images decoded by ``num_workers`` processes; see `stream`); ``auto``
    streams the folders `auto_stream_index` picks and holds everything else in memory. Shards are always streamed.
    ``image_size`` given to a set held in memory must be its own size.
    """
    if mode not in DATA_MODES:
        raise ConfigError(f"unknown data_mode {mode!r}: expected one of {', '.join(DATA_MODES)}")
    ds = _load(name, data_dir, download, mode, image_size, num_workers)
    if isinstance(ds, Dataset) and image_size is not None and image_size != ds.image_size:
        raise ConfigError(f"image_size={image_size}: {ds.name} is held in memory at its own size {ds.image_size};"
                          " image_size applies to streamed image folders (data_mode=stream)")
    return ds


NORMALIZATIONS = ("dataset", "imagenet")  # the set's own mean and std, or ImageNet's (IteRand's CIFAR pipeline)


def normalized_as(ds: Dataset, normalization: str) -> Dataset:
    """`ds` normalized by another mean and std: ImageNet's (an RGB set held in memory)."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if normalization == "dataset":
        return ds
    if not isinstance(ds, Dataset) or ds.tokens or ds.in_channels != 3:
        raise ConfigError(f"normalization={normalization} replaces the mean and std of RGB images held in memory; "
                          f"{ds.name} is not such a set")
    return dataclasses.replace(ds, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _load(name: str, data_dir: str | Path | None, download: bool, mode: str, image_size: int | None,
          num_workers: int | None) -> Dataset | StreamDataset | ShardDataset:
    key = name.strip().lower()
    if mode == "stream" and key in DATASET_NAMES and key != "imagenet":
        raise ConfigError(f"data_mode=stream reads image folders (train/<class>/ and val/ or test/); {key} is held in"
                          " memory (data_mode=memory or auto)")
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
    if key == "imagenet":
        if mode == "memory":
            raise ConfigError("imagenet is streamed (data_mode=stream or auto): its 1.28 M images of differing sizes"
                              " do not fit in memory")
        path = find_imagenet(root)
        return load_stream(path, "imagenet", image_size=image_size, num_workers=num_workers)
    path = _find_path(name.strip(), root)
    if path is None and looks_like_path(name):
        looked = " or ".join(str(c) for c in _candidates(name.strip(), root))
        raise ConfigError(f"dataset {name.strip()!r} not found: no file or folder {looked}")
    if path is None:
        raise ConfigError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)} or a path to an image folder"
            " / .tar.gz with train/<class>/ and test/<class>/"
        )
    if path.is_dir() and find_shard_files(path) is not None:
        if mode == "memory":
            raise ConfigError(f"{path}: WebDataset shards are streamed, a layout data_mode=memory does not read: use "
                              "data_mode=stream (or auto)")
        size, workers = stream_settings(image_size, num_workers)
        return load_shards(path, _folder_name(path), image_size=size, num_workers=workers)
    if mode == "stream" and not path.is_dir():
        raise ConfigError(f"data_mode=stream reads a folder, and {path} is an archive: extract it first")
    only_streamed = _only_streamed(path) if path.is_dir() else None
    if mode == "memory" and only_streamed:
        raise ConfigError(f"{path}: {only_streamed}, a layout data_mode=memory does not read (it reads train/<class>/ "
                          "and test/<class>/): use data_mode=stream (or auto)")
    index = None
    if mode == "auto" and path.is_dir():  # a layout only streams read is indexed here, so its errors are the index's
        index = index_image_folder(path) if only_streamed else auto_stream_index(path)
    if mode == "stream" or index is not None:
        return load_stream(path, _folder_name(path), image_size=image_size, num_workers=num_workers, index=index)
    return _load_folder(path, _folder_name(path))


def _only_streamed(root: Path) -> str | None:
    """Why folder `root` is laid out as only streams read it (an evaluation split val/, ImageNet's name, or a test/
    of images without class folders), else None."""
    test = root / "test"
    if (root / "val").is_dir() and not test.is_dir():
        return "its evaluation split is val/ (ImageNet's layout)"
    if test.is_dir() and any(p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
                             for p in test.iterdir()):
        return "test/ holds images without class folders (labelled by a labels file)"
    return None


def _candidates(name: str, root: Path | None) -> list[Path]:
    """Where a dataset path may be: itself when absolute, else under data_dir, then under the cwd."""
    p = Path(name).expanduser()
    return [p] if p.is_absolute() else [*([root / p] if root is not None else []), Path.cwd() / p]


def _find_path(name: str, root: Path | None) -> Path | None:
    """Resolve a dataset path: absolute, else relative to data_dir, else relative to the cwd."""
    for c in _candidates(name, root):
        if c.is_dir() or (c.is_file() and _is_tarball(c)):
            return c.resolve()
        if c.is_file():
            raise ConfigError(f"dataset path {c} is neither a directory nor a .tar.gz/.tgz archive")
    return None
