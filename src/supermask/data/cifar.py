"""CIFAR-10/100 from the official python archives (read with a restricted unpickler), or an image-folder copy."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from supermask.errors import ConfigError

from .base import Dataset, _Arrays, _is_tarball, _one_line
from .cache import _fingerprint, _memo_load, register_reader
from .download import _md5_file, download_file
from .folder import _load_folder

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


register_reader("cifar-archive", lambda path, name: read_cifar_archive(path, name, md5=CIFAR_MD5.get(name)))
register_reader("cifar-dir", _read_cifar_folder)
