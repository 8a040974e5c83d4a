"""Image folders decoded whole into memory: a directory or .tar.gz with train/<class>/* and test/<class>/*."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from supermask.errors import ConfigError

from .base import _SPLITS, Dataset, _Arrays, _one_line
from .cache import _fingerprint, _memo_load, _walk_stats, register_reader

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
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


register_reader("folder", lambda path, name: _decode_folder_path(path))
