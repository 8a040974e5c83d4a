"""The standard ImageNet recipes on PIL images, for streamed data: each image becomes a uint8 (3, size, size) tensor.

Training: RandomResizedCrop to `size` (a crop of 8-100% of the area with aspect ratio 3/4-4/3, drawn as torchvision
draws it, falling back to a center crop after 10 misses), then a horizontal flip with probability 1/2. Evaluation:
resize the shorter side to round(size / 0.875), then crop the center. Every random number comes from the numpy
Generator passed in; `sample_rng` derives it from (data_seed, epoch, sample index), so a sample's augmentation is the
same whichever worker or process decodes it. Normalization happens later, on the training device.

The crop, resize and flip are torchvision's functional ops where torchvision imports; elsewhere the PIL calls that
those ops make for PIL images (crop, then bilinear resize with PIL's antialiasing; a left-right transpose), so both
give the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from supermask.errors import ConfigError

try:
    import torchvision.transforms.functional as TF
except Exception:  # noqa: BLE001 - a torchvision built for another torch fails to import in many ways
    TF = None

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # evaluation crops the central 87.5% (224 of 256 pixels)
_TRIES = 10

Box = tuple[int, int, int, int]  # top, left, height, width


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, index) only."""
    if seed < 0 or epoch < 0 or index < 0:
        raise ConfigError(f"seed, epoch and index must be >= 0, got {seed}, {epoch}, {index}")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def random_resized_crop_params(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> Box:
    """A random crop (top, left, height, width) of `scale` of the area and aspect ratio (w/h) in `ratio`.

    torchvision's RandomResizedCrop.get_params: up to 10 draws of (area, log-uniform ratio) until the crop fits,
    else the whole image cut to the nearest ratio bound, centered.
    """
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"crop scale and ratio must be increasing positive pairs, got {scale} and {ratio}")
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_shorter_side(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `short`, keeping the aspect ratio as torchvision does."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop_box(width: int, height: int, size: int) -> Box:
    """The central size x size crop of a width x height image (torchvision's rounding)."""
    return round((height - size) / 2), round((width - size) / 2), size, size


def _draft(img: Image.Image, need_w: int, need_h: int) -> float:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when that still leaves need_w x need_h pixels; returns
    the scale it chose (1 for other formats, or when no reduction is small enough).

    A photo is often several times larger than what a crop is resized to; decoding at reduced scale skips most of
    the inverse DCT and colour conversion work, which dominates the time of a full decode (PIL's `thumbnail` does
    the same). Must be called before the image is loaded.
    """
    if img.format != "JPEG":
        return 1.0
    width = img.width
    drafted = img.draft("RGB", (max(1, need_w), max(1, need_h)))
    return 1.0 if drafted is None else img.width / width


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _crop(img: Image.Image, box: Box) -> Image.Image:
    top, left, h, w = box
    return TF.crop(img, top, left, h, w) if TF is not None else img.crop((left, top, left + w, top + h))


def _resize(img: Image.Image, width: int, height: int) -> Image.Image:
    if TF is not None:
        return TF.resize(img, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return img.resize((width, height), Image.Resampling.BILINEAR)


def _hflip(img: Image.Image) -> Image.Image:
    return TF.hflip(img) if TF is not None else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_chw(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(_rgb(img), dtype=np.uint8).transpose(2, 0, 1)))


def _scaled_box(box: Box, s: float, width: int, height: int) -> Box:
    """`box` of the full-size image in a copy decoded at scale s (width x height), at least one pixel."""
    if s == 1.0:
        return box
    top, left = min(round(box[0] * s), height - 1), min(round(box[1] * s), width - 1)
    h = max(1, min(round(box[2] * s), height - top))
    w = max(1, min(round(box[3] * s), width - left))
    return top, left, h, w


def train_transform(img: Image.Image, size: int, rng: np.random.Generator, *, flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop to size x size and a random horizontal flip of a freshly opened image."""
    width, height = img.size
    box = random_resized_crop_params(width, height, rng)
    flipped = flip and rng.random() < 0.5
    s = _draft(img, math.ceil(width * size / box[3]), math.ceil(height * size / box[2]))
    out = _resize(_crop(_rgb(img), _scaled_box(box, s, img.width, img.height)), size, size)
    return to_chw(_hflip(out) if flipped else out)


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to round(size / 0.875), then the central size x size crop, of a freshly opened image."""
    new_w, new_h = resized_shorter_side(img.width, img.height, round(size / EVAL_CROP_FRACTION))
    _draft(img, new_w, new_h)
    return to_chw(_crop(_resize(_rgb(img), new_w, new_h), center_crop_box(new_w, new_h, size)))
