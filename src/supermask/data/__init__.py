"""Datasets as in-memory uint8 tensors, plus deterministic batching and GPU-friendly augmentation.

The named datasets fit in memory (CIFAR is 180 MB as uint8), so we load one once, keep it as
uint8 and convert batches to float on the target device. That keeps the data path simple, makes an
epoch's order and augmentation a pure function of ``(seed, epoch)`` (exact resume), and avoids
DataLoader worker processes.

Sources: sklearn's bundled ``digits``; the official MNIST IDX files; the official CIFAR-10/100 python
archives (read with a restricted unpickler); or any image folder / ``.tar.gz`` laid out as
``train/<class>/*`` and ``test/<class>/*``. Decoded archives are cached as ``.npz`` files. One dataset is token
sequences, not images: ``listops``, generated from a fixed seed (see `generate_listops`).

Image folders too large for memory, or whose images differ in size (ImageNet), are read lazily instead: a
StreamDataset decodes each image when a batch needs it, in DataLoader worker processes (`stream`, `transforms`).
Folders of WebDataset shards are streamed alike, each process reading its own shards (`shards`, `shard_dataset`).

One module per source (`mnist`, `cifar`, `folder`, `generated`, `stream`, `shard_dataset`), `base` for the
Dataset type, `cache` and `download` for files, `transforms` for the streamed images' crops, `batches` for batching
and augmentation, `load` for `load_dataset`, `prepare` for the data as a run trains on it (a task of a stream,
normalized, `holdout`'s images set aside), `holdout` for that split; this package re-exports the public API.
"""

from .base import DATASET_NAMES, Dataset, content_sha256, default_cache_dir, default_data_dir, split_sha256
from .batches import (ReplacedCount, augment_batch, check_augment, eval_batches, is_streamed, model_inputs, normalize,
                      on_device,
                      preprocessing, train_batches, train_steps)
from .cifar import CIFAR_MD5, CIFAR_URLS, read_cifar_archive, restricted_pickle_load
from .download import download_file
from .generated import LISTOPS_TOKENS, generate_listops, listops_value
from .load import DATA_MODES, NORMALIZATIONS, load_dataset, normalized_as
from .mnist import MNIST_MD5, MNIST_URL, parse_idx, read_idx
from .shard_dataset import ShardDataset
from .stream import StreamDataset, index_image_folder

__all__ = [
    "CIFAR_MD5",
    "CIFAR_URLS",
    "DATASET_NAMES",
    "DATA_MODES",
    "NORMALIZATIONS",
    "normalized_as",
    "Dataset",
    "ReplacedCount",
    "LISTOPS_TOKENS",
    "MNIST_MD5",
    "MNIST_URL",
    "augment_batch",
    "content_sha256",
    "split_sha256",
    "check_augment",
    "default_cache_dir",
    "default_data_dir",
    "download_file",
    "eval_batches",
    "generate_listops",
    "listops_value",
    "load_dataset",
    "model_inputs",
    "normalize",
    "on_device",
    "parse_idx",
    "preprocessing",
    "read_cifar_archive",
    "read_idx",
    "restricted_pickle_load",
    "ShardDataset",
    "StreamDataset",
    "index_image_folder",
    "is_streamed",
    "train_batches",
    "train_steps",
]
