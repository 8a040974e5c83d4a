"""An ImageNet-shaped set made of real images, for testing and benchmarking the streamed data path without ImageNet.

`build_imagenet_like(OUT)` takes the first `per_class` training and `val_per_class` test images (in file-name
order) of each class of an image folder or .tar.gz (the CIFAR-10 JPEG copy by default), upscales each to a random
size (width 150-500 pixels, aspect ratio 3/4-4/3 log-uniform, height kept within 150-500) and writes them as JPEG
twice over:

    OUT/train/<wnid>/<wnid>_<k>.JPEG            ImageNet's training layout
    OUT/val/ILSVRC2012_val_<8 digits>.JPEG      flat, the classes interleaved, as ImageNet's validation images
    OUT/LOC_val_solution.csv                    their labels in Kaggle's format (ImageId,PredictionString)
    OUT/LOC_synset_mapping.txt                  "<wnid> <class name>" per line, in label order
    OUT/shards/train-NNNNNN.tar                 the same JPEG bytes as WebDataset shards: <key>.jpg + <key>.cls
    OUT/shards/val-NNNNNN.tar                   (cls: the label as ASCII digits), training samples shuffled

The wnids are made up (n01440000, n01441000, ...) but sort in the source's class order, so label i is class i in
every layout. Everything depends only on `seed`. The folder appears complete or not at all (built beside it, then
renamed). ``python -m supermask.data.imagenet_like OUT`` runs it from the command line.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from supermask.errors import ConfigError, SupermaskError

from .base import _one_line, default_data_dir
from .folder import _IMAGE_SUFFIXES

MIN_SIDE, MAX_SIDE = 150, 500
RATIO = (3 / 4, 4 / 3)
JPEG_QUALITY = 90
CIFAR_COPY = "cifar10-jpeg75.tar.gz"


@dataclass(frozen=True)
class ImagenetLike:
    """Where a built set is: its root, the brace patterns of its shards and its classes (wnid, source name)."""

    root: Path
    train_shards: str
    val_shards: str
    wnids: tuple[str, ...]
    names: tuple[str, ...]


def fake_wnid(label: int) -> str:
    """A WordNet-id-shaped name ('n' and 8 digits) that sorts like the label."""
    return f"n{1440000 + 1000 * label:08d}"


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height), both in [150, 500], width uniform, aspect ratio log-uniform in [3/4, 4/3] before clipping."""
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    return width, min(MAX_SIDE, max(MIN_SIDE, round(width / ratio)))


def _jpeg(name: str, image: Path | bytes, size: tuple[int, int]) -> bytes:
    """An image file or its encoded bytes resized (bicubic) to size=(width, height), as RGB JPEG bytes."""
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            out = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f"{name}: cannot decode this source image ({_one_line(e)})") from None
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _split_class(name: str) -> tuple[str, str] | None:
    """(split, class) of an image path ending in train|test/<class>/<file>, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in ("train", "test") or any(p.startswith(".") for p in parts):
        return None
    return (parts[-3], parts[-2]) if PurePosixPath(name).suffix.lower() in _IMAGE_SUFFIXES else None


def read_source(source: Path) -> dict[tuple[str, str], list[tuple[str, Path | bytes]]]:
    """The images of an image folder (their paths) or .tar.gz (their encoded bytes: a gzip stream cannot be
    revisited) laid out train/<class>/*, test/<class>/*, by (split, class): (name, image) pairs in name order. Decoding
    only the images used is several times faster than decoding the whole set."""
    found: dict[tuple[str, str], list[tuple[str, Path | bytes]]] = {}
    try:
        if source.is_dir():
            for path in source.rglob("*"):
                hit = _split_class(path.relative_to(source).as_posix())
                if hit is not None and path.is_file():
                    found.setdefault(hit, []).append((str(path), path))
        else:
            with tarfile.open(source, "r|*") as tar:  # a stream: no index of 60,000 members kept
                for m in tar:
                    hit = _split_class(m.name) if m.isfile() else None
                    if hit is not None:
                        found.setdefault(hit, []).append((f"{source}:{m.name}", tar.extractfile(m).read()))
    except (OSError, tarfile.TarError) as e:
        raise ConfigError(f"{source}: cannot read ({_one_line(e)})") from None
    return {k: sorted(v, key=lambda item: item[0]) for k, v in found.items()}


def _pick(images: dict[tuple[str, str], list[tuple[str, Path | bytes]]], split: str, classes: list[str], n: int,
          source: Path) -> list[tuple[int, str, Path | bytes]]:
    """[(label, name, image)]: the first n images of every class, class by class."""
    chosen = []
    for label, c in enumerate(classes):
        have = images.get((split, c), [])
        if len(have) < n:
            raise ConfigError(f"{source}: {split}/{c} has {len(have)} images, fewer than the {n} asked for")
        chosen += [(label, name, image) for name, image in have[:n]]
    return chosen


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime 0, owner root: the same bytes on every build
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(folder: Path, split: str, samples: list[tuple[str, bytes, int]], shard_size: int) -> str:
    """Write (key, jpeg, label) samples as split-NNNNNN.tar of `shard_size` samples; returns the brace pattern."""
    n = math.ceil(len(samples) / shard_size)
    for s in range(n):
        with tarfile.open(folder / f"{split}-{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, jpeg, label in samples[s * shard_size : (s + 1) * shard_size]:
                _add(tar, f"{key}.jpg", jpeg)
                _add(tar, f"{key}.cls", str(label).encode())
    return str(folder / f"{split}-{{000000..{n - 1:06d}}}.tar")


def build_imagenet_like(
    out: str | Path, *, per_class: int = 20, val_per_class: int = 5, shard_size: int = 50, seed: int = 0,
    source: str | Path | None = None, data_dir: str | Path | None = None,
) -> ImagenetLike:
    """Build the set described in the module docstring in `out` (which must not exist, or be an empty folder) from
    `source`, an image folder or .tar.gz laid out train/<class>/*, test/<class>/* (by default the CIFAR-10 copy
    cifar10-jpeg75.tar.gz in `data_dir`, else $SUPERMASK_DATA)."""
    if per_class < 1 or val_per_class < 1 or shard_size < 1:
        raise ConfigError(f"per_class, val_per_class and shard_size must be >= 1, got {per_class}, {val_per_class},"
                          f" {shard_size}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; give a new folder")
    if source is None:
        data = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        source = (data or Path(".")) / CIFAR_COPY
    source = Path(source)
    if not source.exists():
        raise ConfigError(f"{source}: no such image folder or .tar.gz")
    images = read_source(source)
    classes = sorted({c for split, c in images if split == "train"})
    if not classes:
        raise ConfigError(f"{source}: no images under train/<class>/")
    wnids = tuple(fake_wnid(i) for i in range(len(classes)))
    rng = np.random.default_rng(seed)
    train_src = _pick(images, "train", classes, per_class, source)
    val_src = _pick(images, "test", classes, val_per_class, source)
    val_src = [val_src[j] for j in rng.permutation(len(val_src))]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        train, val = [], []
        for k, (label, name, image) in enumerate(train_src):
            wnid = wnids[label]
            key, jpeg = f"{wnid}_{k:06d}", _jpeg(name, image, random_size(rng))
            (tmp / "train" / wnid).mkdir(parents=True, exist_ok=True)
            (tmp / "train" / wnid / f"{key}.JPEG").write_bytes(jpeg)
            train.append((key, jpeg, label))
        (tmp / "val").mkdir()
        rows = ["ImageId,PredictionString"]
        for k, (label, name, image) in enumerate(val_src, start=1):
            key, jpeg = f"ILSVRC2012_val_{k:08d}", _jpeg(name, image, random_size(rng))
            (tmp / "val" / f"{key}.JPEG").write_bytes(jpeg)
            rows.append(f"{key},{wnids[label]} 0 0 1 1")  # Kaggle's boxes; only the class is read
            val.append((key, jpeg, label))
        (tmp / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
        (tmp / "LOC_synset_mapping.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, classes)))
        (tmp / "shards").mkdir()
        shuffled = [train[j] for j in rng.permutation(len(train))]  # shards of one class each would not mix
        patterns = [_write_shards(tmp / "shards", split, samples, shard_size).replace(str(tmp), str(out), 1)
                    for split, samples in (("train", shuffled), ("val", val))]
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a built set is an ordinary folder
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImagenetLike(out, patterns[0], patterns[1], wnids, tuple(classes))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m supermask.data.imagenet_like", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to create")
    p.add_argument("--per-class", type=int, default=20, help="training images per class (default 20)")
    p.add_argument("--val-per-class", type=int, default=5, help="validation images per class (default 5)")
    p.add_argument("--shard-size", type=int, default=50, help="samples per WebDataset shard (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=None,
                   help=f"image folder or .tar.gz with train/<class>/ and test/<class>/ (default DATA/{CIFAR_COPY})")
    p.add_argument("--data-dir", default=None, help="DATA, where the default source is (default $SUPERMASK_DATA)")
    a = p.parse_args(argv)
    try:
        built = build_imagenet_like(a.out, per_class=a.per_class, val_per_class=a.val_per_class,
                                    shard_size=a.shard_size, seed=a.seed, source=a.source, data_dir=a.data_dir)
    except SupermaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{built.root}: train/ val/ and shards {built.train_shards} {built.val_shards}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
