"""Tests for supermask.data: loaders on small hand-built files, batching, augmentation, and the real datasets."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supermask import data
from supermask.data import (
    Dataset,
    augment_batch,
    download_file,
    eval_batches,
    load_dataset,
    normalize,
    parse_idx,
    read_cifar_archive,
    read_idx,
    restricted_pickle_load,
    train_batches,
)
from supermask.errors import ConfigError
from tar_helpers import write_tar

REAL_DATA = Path(os.environ.get("SUPERMASK_DATA") or Path(__file__).parents[2] / "shared" / "datasets")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the decoded-array cache out of the user's home unless they chose one with SUPERMASK_CACHE."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("SUPERMASK_CACHE"):
            mp.setenv("SUPERMASK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _dataset(x: np.ndarray, y: np.ndarray, mean=(0.0,), std=(1.0,)) -> Dataset:
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset("toy", tx, ty, tx.clone(), ty.clone(), ("a", "b"), mean, std, "test", False)


# --------------------------------------------------------------------------------------------- #
# augment_batch


def _random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Nonzero random pixels, so zero padding and every shifted window are distinguishable."""
    return torch.from_numpy(np.random.RandomState(seed).randint(1, 256, (b, c, h, w), dtype=np.uint8))


def test_augment_without_pad_or_flip_is_identity():
    x = _random_images(8, 3, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert out.dtype == torch.uint8 and torch.equal(out, x)


def test_augment_outputs_are_windows_of_the_padded_input():
    pad, x = 4, _random_images(200, 2, 10, 10)
    out = augment_batch(x, torch.Generator().manual_seed(1), pad=pad, flip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    seen_offsets = set()
    for i in range(len(x)):
        matches = []
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                window = padded[i, :, dy : dy + 10, dx : dx + 10]
                for flipped in (False, True):
                    if np.array_equal(window[..., ::-1] if flipped else window, out[i].numpy()):
                        matches.append((dy, dx, flipped))
        assert len(matches) == 1, f"image {i}: {matches}"
        seen_offsets.add(matches[0][:2])
    # offsets span the whole range [0, 2*pad] in both directions
    assert {dy for dy, _ in seen_offsets} == set(range(2 * pad + 1))
    assert {dx for _, dx in seen_offsets} == set(range(2 * pad + 1))


def test_augment_flips_about_half():
    x = _random_images(4000, 1, 3, 4)
    out = augment_batch(x, torch.Generator().manual_seed(2), pad=0, flip=True)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 1800 < int(flipped.sum()) < 2200


def test_augment_depends_only_on_generator_seed():
    x = _random_images(64, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _random_images(64, 3, 8, 8))  # input untouched


# --------------------------------------------------------------------------------------------- #
# normalize, train_batches, eval_batches


def test_normalize_hand_case():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = normalize(x, (0.5, 0.25), (0.5, 0.25))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[-1.0, 1.0]], [[-0.2, 0.6]]]]))
    with pytest.raises(ConfigError):
        normalize(x, (0.5,), (0.5,))


def _indexed_dataset(n: int) -> Dataset:
    """Images whose pixels encode their index (low byte, high byte); labels are the index too."""
    x = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return _dataset(x, np.arange(n, dtype=np.int64))


def _decode_index(xb: torch.Tensor) -> torch.Tensor:
    v = torch.round(xb * 255).to(torch.int64)  # mean 0, std 1
    return v[:, 0, 0, 0] + 256 * v[:, 0, 0, 1]


def test_train_batches_cover_every_index_once_per_epoch():
    ds = _indexed_dataset(300)
    batches = list(train_batches(ds, 64, seed=3, epoch=0, augment=False))
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(300))
    assert not torch.equal(order, torch.arange(300))
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(_decode_index(xb), yb)  # images stay paired with their labels


def test_train_batches_order_is_a_function_of_seed_and_epoch():
    ds = _indexed_dataset(257)

    def order(seed: int, epoch: int) -> list[int]:
        return torch.cat([y for _, y in train_batches(ds, 50, seed=seed, epoch=epoch, augment=False)]).tolist()

    assert order(1, 4) == order(1, 4)
    assert order(1, 4) != order(1, 5)
    assert order(1, 4) != order(2, 4)
    with pytest.raises(ConfigError):
        next(train_batches(ds, 0, seed=1, epoch=0, augment=False))


def test_train_batches_augmentation_is_reproducible():
    x = _random_images(70, 3, 8, 8).numpy()
    ds = _dataset(x, np.arange(70, dtype=np.int64), mean=(0.5,) * 3, std=(0.25,) * 3)
    a = list(train_batches(ds, 32, seed=0, epoch=2, augment=True))
    b = list(train_batches(ds, 32, seed=0, epoch=2, augment=True))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    plain = list(train_batches(ds, 32, seed=0, epoch=2, augment=False))
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in a]
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain))


def test_eval_batches_in_order_without_augmentation():
    ds = _indexed_dataset(10)
    batches = list(eval_batches(ds, 4))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.cat([_decode_index(x) for x, _ in batches]), torch.arange(10))
    assert len(list(eval_batches(ds, 100, split="train"))) == 1
    with pytest.raises(ConfigError, match="split"):
        next(eval_batches(ds, 4, split="val"))


# --------------------------------------------------------------------------------------------- #
# IDX / MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim  # unsigned bytes + number of dims
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def test_parse_idx_raw_and_gz(tmp_path: Path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    raw = _idx_bytes(images)
    assert raw[:4] == b"\x00\x00\x08\x03"  # magic 2051, written by hand above
    np.testing.assert_array_equal(parse_idx(raw), images)
    (tmp_path / "im").write_bytes(raw)
    (tmp_path / "lab.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "im"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "lab.gz"), labels)


@pytest.mark.parametrize(
    "blob",
    [
        struct.pack(">IIII", 2052, 1, 1, 1) + b"\x00",  # wrong magic
        struct.pack(">IIII", 2051, 2, 2, 2) + b"\x00" * 7,  # one byte short
        b"\x00\x00",  # no header
    ],
)
def test_parse_idx_rejects_bad_files(blob: bytes):
    with pytest.raises(ConfigError):
        parse_idx(blob)


def _write_mnist(directory: Path, monkeypatch: pytest.MonkeyPatch | None) -> tuple[np.ndarray, np.ndarray]:
    """Tiny IDX files under MNIST's names; registers their md5s when monkeypatch is given."""
    rng = np.random.RandomState(0)
    train_x, test_x = rng.randint(0, 256, (5, 28, 28)), rng.randint(0, 256, (3, 28, 28))
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9]),
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": np.array([4, 4, 5]),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        raw = _idx_bytes(a)
        (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        if monkeypatch is not None:
            monkeypatch.setitem(data.MNIST_MD5, stem, hashlib.md5(raw).hexdigest())
    return train_x, test_x


def test_mnist_from_tiny_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    train_x, test_x = _write_mnist(tmp_path / "MNIST" / "raw", monkeypatch)
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.train_x.shape == (5, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), train_x)
    assert ds.train_y.tolist() == [0, 1, 2, 3, 9] and ds.test_y.tolist() == [4, 4, 5]
    assert (ds.mean, ds.std, ds.augment, ds.num_classes) == ((0.1307,), (0.3081,), False, 10)


def test_mnist_checksum_mismatch(tmp_path: Path):
    _write_mnist(tmp_path / "mnist", None)  # official md5s stay in place
    with pytest.raises(ConfigError, match="md5"):
        load_dataset("mnist", tmp_path, download=False)


def test_mnist_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _write_mnist(tmp_path / "mirror", monkeypatch)
    monkeypatch.setattr(data.mnist, "MNIST_URL", (tmp_path / "mirror").as_uri() + "/")
    (tmp_path / "data").mkdir()
    ds = load_dataset("mnist", tmp_path / "data")
    assert len(ds.train_y) == 5
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(
        f"{stem}.gz" for stem in data.MNIST_MD5
    )


def test_missing_data_dir_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="does-not-exist"):
        load_dataset("mnist", tmp_path / "does-not-exist")


# --------------------------------------------------------------------------------------------- #
# CIFAR python archives and the restricted unpickler

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_members(per_batch: int = 4) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """Batch files shaped like the official cifar-10-batches-py (protocol-2 pickles, bytes keys)."""
    rng = np.random.RandomState(0)
    members, xs, ys = {}, [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8)
        y = [int(v) for v in rng.randint(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"f.png"] * per_batch}
        members[name] = pickle.dumps(batch, protocol=2)
        xs.append(x)
        ys.append(y)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch}
    members["batches.meta"] = pickle.dumps(meta, protocol=2)
    return members, np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys)


def _cifar10_archive(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    members, x, y = _cifar_members()
    write_tar(path, {f"cifar-10-batches-py/{k}": v for k, v in members.items()}, "w:gz")
    return path, x, y


def test_read_cifar_archive(tmp_path: Path):
    path, x, y = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    arrays = read_cifar_archive(path, "cifar10", md5=None)
    np.testing.assert_array_equal(arrays.train_x, x[:20])
    np.testing.assert_array_equal(arrays.test_x, x[20:])
    np.testing.assert_array_equal(np.concatenate([arrays.train_y, arrays.test_y]), y)
    assert arrays.classes == CIFAR10_NAMES
    with pytest.raises(ConfigError, match="md5"):
        read_cifar_archive(path, "cifar10", md5="0" * 32)


def test_load_cifar10_archive_and_extracted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, x, y = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(ConfigError, match="md5"):  # the official checksum guards the archive
        load_dataset("cifar10", tmp_path)
    monkeypatch.setitem(data.CIFAR_MD5, "cifar10", hashlib.md5(path.read_bytes()).hexdigest())
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(ds.train_x.numpy(), x[:20])
    assert ds.augment and ds.classes == CIFAR10_NAMES and ds.source == str(path.resolve())
    assert ds.mean == (0.491, 0.482, 0.447)

    other = tmp_path / "extracted"
    with tarfile.open(path) as tf:
        tf.extractall(other, filter="data")
    ds2 = load_dataset("cifar10", other)
    np.testing.assert_array_equal(ds2.test_x.numpy(), x[20:])
    assert ds2.source.endswith("cifar-10-batches-py")


def test_load_cifar100_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.RandomState(1)
    x = rng.randint(0, 256, (7, 3072)).astype(np.uint8)
    names = [f"class{i:03d}".encode() for i in range(100)]
    members = {
        "train": pickle.dumps({b"fine_labels": [0, 1, 2, 3, 99], b"coarse_labels": [0] * 5, b"data": x[:5]}, 2),
        "test": pickle.dumps({b"fine_labels": [5, 6], b"coarse_labels": [0] * 2, b"data": x[5:]}, 2),
        "meta": pickle.dumps({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, 2),
    }
    path = write_tar(tmp_path / "cifar-100-python.tar.gz", {f"cifar-100-python/{k}": v for k, v in members.items()},
                     "w:gz")
    monkeypatch.setitem(data.CIFAR_MD5, "cifar100", hashlib.md5(path.read_bytes()).hexdigest())
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.train_y.tolist() == [0, 1, 2, 3, 99] and ds.test_y.tolist() == [5, 6]
    np.testing.assert_array_equal(ds.test_x.numpy().reshape(2, -1), x[5:])


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_code(tmp_path: Path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        restricted_pickle_load(blob)
    assert not marker.exists()
    # the same inside an archive that otherwise looks official
    members, _, _ = _cifar_members()
    members["data_batch_3"] = blob
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", {f"cifar-10-batches-py/{k}": v for k, v in members.items()},
                     "w:gz")
    with pytest.raises(ConfigError, match="refusing"):
        read_cifar_archive(path, "cifar10", md5=None)
    assert not marker.exists()


def test_restricted_unpickler_loads_numpy_and_rejects_garbage():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4):
        out = restricted_pickle_load(pickle.dumps({b"a": arr, b"l": [1, 2]}, protocol=protocol))
        np.testing.assert_array_equal(out[b"a"], arr)
    with pytest.raises(ConfigError):
        restricted_pickle_load(b"not a pickle")


# --------------------------------------------------------------------------------------------- #
# Image folders


def _write_folder(root: Path, size=(5, 4), mode="RGB", classes=("cat", "dog"), n=(2, 1), seed=0) -> dict:
    """train/<class>/<i>.png and test/<class>/<i>.png with random pixels; returns the arrays written."""
    rng = np.random.RandomState(seed)
    written: dict[tuple[str, str, str], np.ndarray] = {}
    for split, count in zip(("train", "test"), n):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                a = rng.randint(0, 256, shape).astype(np.uint8)
                Image.fromarray(a, mode).save(root / split / cls / f"{i}.png")
                written[(split, cls, f"{i}.png")] = a
    return written


def _check_folder(ds: Dataset, written: dict, classes=("cat", "dog")) -> None:
    assert ds.classes == classes
    for split, xs, ys in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        keys = sorted(k for k in written if k[0] == split)  # (class, file name) order
        assert ys.tolist() == [classes.index(k[1]) for k in keys]
        for img, key in zip(xs.numpy(), keys):
            expected = written[key]
            np.testing.assert_array_equal(img, expected.transpose(2, 0, 1) if expected.ndim == 3 else expected[None])


def test_image_folder_directory(tmp_path: Path):
    written = _write_folder(tmp_path / "pets", size=(5, 4))
    ds = load_dataset(str(tmp_path / "pets"))
    _check_folder(ds, written)
    assert ds.name == "pets" and ds.train_x.shape == (4, 3, 4, 5) and ds.image_size == 4 and ds.in_channels == 3
    assert not ds.augment  # smaller than 32 px
    train = np.stack([written[k] for k in sorted(written) if k[0] == "train"]).astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, train.mean(axis=(0, 1, 2)), atol=1e-12)
    np.testing.assert_allclose(ds.std, train.std(axis=(0, 1, 2)), atol=1e-12)
    # relative to data_dir gives the same data
    assert torch.equal(load_dataset("pets", tmp_path).train_x, ds.train_x)


def test_image_folder_tarball_with_top_dir(tmp_path: Path):
    written = _write_folder(tmp_path / "src" / "birds", size=(32, 32), n=(3, 2))
    with tarfile.open(tmp_path / "birds.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "birds", arcname="birds")
    ds = load_dataset(str(tmp_path / "birds.tar.gz"))
    _check_folder(ds, written)
    assert ds.name == "birds" and ds.augment and ds.source == str((tmp_path / "birds.tar.gz").resolve())


def test_image_folder_grayscale_keeps_one_channel(tmp_path: Path):
    written = _write_folder(tmp_path / "gray", mode="L", classes=("a", "b", "c"))
    ds = load_dataset(str(tmp_path / "gray"))
    _check_folder(ds, written, classes=("a", "b", "c"))
    assert ds.in_channels == 1


def test_image_folder_errors(tmp_path: Path):
    _write_folder(tmp_path / "mixed")
    Image.new("RGB", (6, 6)).save(tmp_path / "mixed" / "train" / "cat" / "big.png")
    with pytest.raises(ConfigError, match="one size"):
        load_dataset(str(tmp_path / "mixed"))
    _write_folder(tmp_path / "uneven")
    (tmp_path / "uneven" / "test" / "dog" / "0.png").unlink()
    (tmp_path / "uneven" / "test" / "dog").rmdir()
    with pytest.raises(ConfigError, match="same class"):
        load_dataset(str(tmp_path / "uneven"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        load_dataset(str(tmp_path / "empty"))


def test_disk_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SUPERMASK_CACHE", str(tmp_path / "cache"))
    written = _write_folder(tmp_path / "pets")
    first = load_dataset(str(tmp_path / "pets"))
    assert len(list((tmp_path / "cache").glob("pets-*.npz"))) == 1
    data.cache._memo_load.cache_clear()
    again = load_dataset(str(tmp_path / "pets"))  # now from the .npz
    assert again is not first and torch.equal(again.train_x, first.train_x) and again.classes == first.classes
    # rewriting an image changes the fingerprint, so the new pixels are decoded
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "pets" / "train" / "cat" / "0.png")
    os.utime(tmp_path / "pets" / "train" / "cat" / "0.png", ns=(1, 1))
    changed = load_dataset(str(tmp_path / "pets"))
    assert int(changed.train_x[0].sum()) == 0 and not np.array_equal(written[("train", "cat", "0.png")], 0)


def test_unwritable_cache_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SUPERMASK_CACHE", str(tmp_path / "file" / "cache"))  # cannot be created
    written = _write_folder(tmp_path / "pets", seed=3)
    _check_folder(load_dataset(str(tmp_path / "pets")), written)


# --------------------------------------------------------------------------------------------- #
# download_file and name resolution


def test_download_file(tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello supermask" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    out = download_file(src.as_uri(), tmp_path / "dl" / "a.bin", md5)
    assert out.read_bytes() == src.read_bytes()

    with pytest.raises(ConfigError, match="md5"):
        download_file(src.as_uri(), tmp_path / "dl" / "b.bin", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["a.bin"]  # no file, no temp left

    with pytest.raises(ConfigError, match="failed"):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "c.bin", None)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["a.bin"]


def test_cifar10_download_failure_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(data.CIFAR_URLS, "cifar10", (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri())
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10", tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and "download failed" in msg
    assert "cifar-10-python.tar.gz" in msg and "SUPERMASK_DATA" in msg and str(tmp_path / "data") in msg
    with pytest.raises(ConfigError, match="no copy found"):
        load_dataset("cifar10", tmp_path / "data", download=False)


def test_cifar10_download_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, x, _ = _cifar10_archive(tmp_path / "mirror.tar.gz")
    monkeypatch.setitem(data.CIFAR_URLS, "cifar10", path.as_uri())
    monkeypatch.setitem(data.CIFAR_MD5, "cifar10", hashlib.md5(path.read_bytes()).hexdigest())
    (tmp_path / "data").mkdir()
    ds = load_dataset("cifar10", tmp_path / "data")
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
    np.testing.assert_array_equal(ds.train_x.numpy(), x[:20])


def test_cifar_image_folder_fallback_matches_the_right_name(tmp_path: Path):
    _write_folder(tmp_path / "cifar100-png", classes=tuple(f"c{i}" for i in range(10)), size=(32, 32), n=(1, 1))
    with pytest.raises(ConfigError, match="no copy found"):  # cifar100* is not a cifar10 copy
        load_dataset("cifar10", tmp_path, download=False)
    written = _write_folder(tmp_path / "cifar10-small", classes=CIFAR10_NAMES, size=(32, 32), n=(1, 1), seed=4)
    ds = load_dataset("cifar10", tmp_path, download=False)
    _check_folder(ds, written, classes=CIFAR10_NAMES)
    assert ds.name == "cifar10" and ds.augment and ds.source.endswith("cifar10-small")
    with pytest.raises(ConfigError, match="needs 100"):  # a 10-class folder cannot be cifar100
        load_dataset("cifar100", tmp_path, download=False)


def test_unknown_dataset_name(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagenet7': expected one of digits, mnist"):
        load_dataset("imagenet7", tmp_path)


# --------------------------------------------------------------------------------------------- #
# digits (bundled with scikit-learn)


def test_digits():
    ds = load_dataset("digits")
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == 8 and not ds.augment
    assert ds.train_x.shape[1:] == (1, 8, 8) and ds.train_x.dtype == torch.uint8
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert int(ds.train_x.max()) == 255 and ds.source == "sklearn:load_digits"
    test_counts = torch.bincount(ds.test_y, minlength=10)
    all_counts = test_counts + torch.bincount(ds.train_y, minlength=10)
    assert torch.all((test_counts.double() / all_counts - 0.2).abs() < 0.02)  # stratified 80/20
    fresh = data.generated._load_digits.__wrapped__()  # bypass the in-process cache: the split is fixed
    assert torch.equal(fresh.test_x, ds.test_x) and torch.equal(fresh.train_y, ds.train_y)
    assert load_dataset("digits") is ds


# --------------------------------------------------------------------------------------------- #
# Real data (skipped where the files are absent)

CIFAR_JPEG = REAL_DATA / "cifar10-jpeg75.tar.gz"
MNIST_DIR = REAL_DATA / "mnist"


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason=f"{CIFAR_JPEG} not present")
def test_real_cifar10_jpeg_copy():
    ds = load_dataset("cifar10", REAL_DATA, download=False)
    assert ds.source.endswith("cifar10-jpeg75.tar.gz")
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.classes == CIFAR10_NAMES and ds.augment
    # the channel means of the copy are close to the official constants used for normalization
    measured = ds.train_x.sum(dim=(0, 2, 3), dtype=torch.float64) / (50000 * 32 * 32 * 255)
    assert torch.allclose(measured, torch.tensor(ds.mean, dtype=torch.float64), atol=0.01)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"{MNIST_DIR} not present")
def test_real_mnist():
    ds = load_dataset("mnist", REAL_DATA, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(ds.train_y).tolist() == counts
