"""Tests for supermask.data.transforms: crop sampling against hand-worked cases and its bounds, exact pixels on small
arrays, evaluation resizing, JPEG draft decoding, and per-sample determinism."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from supermask.data import transforms as T
from supermask.errors import ConfigError


class Scripted:
    """A stand-in for numpy's Generator that returns scripted numbers, to walk the crop sampler by hand."""

    def __init__(self, uniform=(), integers=(), random=()):
        self._u, self._i, self._r = list(uniform), list(integers), list(random)
        self.integer_bounds: list[tuple[int, int]] = []

    def uniform(self, lo, hi):
        v = self._u.pop(0)
        assert lo <= v <= hi
        return v

    def integers(self, lo, hi):
        self.integer_bounds.append((lo, hi))
        return self._i.pop(0)

    def random(self):
        return self._r.pop(0)


def _image(w: int, h: int) -> tuple[Image.Image, np.ndarray]:
    """An RGB image whose every pixel is distinct, and its (H, W, 3) array."""
    a = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) % 251
    a = a.astype(np.uint8)
    return Image.fromarray(a), a


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    """A smooth colour JPEG (gradients plus a little noise), so reduced-scale decoding is close to full decoding."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)], axis=2)
    rgb += np.random.RandomState(seed).normal(0, 3, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- #
# RandomResizedCrop parameters


def test_crop_params_hand_worked():
    # 100x100, area fraction 0.25 and ratio 1: a 50x50 crop, placed by two integer draws in [0, 51).
    rng = Scripted(uniform=[0.25, 0.0], integers=[7, 3])
    assert T.random_resized_crop_params(100, 100, rng) == (7, 3, 50, 50)
    assert rng.integer_bounds == [(0, 51), (0, 51)]
    # fraction 0.5, ratio 4/3: w = round(sqrt(5000 * 4/3)) = round(81.65) = 82, h = round(sqrt(3750)) = round(61.24)
    # = 61.
    rng = Scripted(uniform=[0.5, math.log(4 / 3)], integers=[39, 18])
    assert T.random_resized_crop_params(100, 100, rng) == (39, 18, 61, 82)
    assert rng.integer_bounds == [(0, 40), (0, 19)]


def test_crop_params_retry_after_a_miss():
    # The whole area at ratio 4/3 is 115 pixels wide: it does not fit, so a second (area, ratio) pair is drawn.
    rng = Scripted(uniform=[1.0, math.log(4 / 3), 0.25, 0.0], integers=[0, 50])
    assert T.random_resized_crop_params(100, 100, rng) == (0, 50, 50, 50)


@pytest.mark.parametrize(
    ("width", "height", "want"),
    [
        (100, 10, (0, 43, 10, 13)),  # too wide: full height, width round(10 * 4/3) = 13, centered (100 - 13) // 2
        (10, 100, (43, 0, 13, 10)),  # too tall: full width, height round(10 / (3/4)) = 13
        (90, 80, (0, 0, 80, 90)),  # ratio within bounds: the whole image
    ],
)
def test_crop_params_fall_back_to_a_center_crop_after_ten_misses(width, height, want):
    # Area fractions of 1.5-2 never fit, so every one of the 10 tries misses.
    rng = np.random.default_rng(0)
    assert T.random_resized_crop_params(width, height, rng, scale=(1.5, 2.0)) == want


def test_crop_params_obey_the_scale_and_ratio_bounds():
    meta = np.random.default_rng(1)
    for trial in range(400):
        width, height = (int(v) for v in meta.integers(40, 600, 2))
        if not 1 / 3 <= width / height <= 3:
            continue
        top, left, h, w = T.random_resized_crop_params(width, height, np.random.default_rng(trial))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # w and h are rounded, so the bounds hold for some w', h' within half a pixel of them.
        assert T.RATIO[0] <= (w + 0.5) / (h - 0.5) and (w - 0.5) / (h + 0.5) <= T.RATIO[1]
        assert (w + 0.5) * (h + 0.5) >= T.SCALE[0] * width * height


def test_crop_params_spread_over_the_range():
    """Not just in bounds: the crops cover small and whole-image areas and both orientations."""
    fracs, ratios = [], []
    for i in range(300):
        _, _, h, w = T.random_resized_crop_params(400, 400, np.random.default_rng(i))
        fracs.append(w * h / 160000)
        ratios.append(w / h)
    assert min(fracs) < 0.15 and max(fracs) > 0.9
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_bad_scale_or_ratio_is_refused():
    with pytest.raises(ConfigError, match="scale and ratio"):
        T.random_resized_crop_params(10, 10, np.random.default_rng(0), scale=(0.5, 0.1))
    with pytest.raises(ConfigError, match="scale and ratio"):
        T.random_resized_crop_params(10, 10, np.random.default_rng(0), ratio=(0.0, 1.0))


# --------------------------------------------------------------------------------------------- #
# Pixels


def test_train_transform_crops_exactly_and_flips():
    # 8x6 image (area 48): fraction 1/3 at ratio 1 is a 4x4 crop; output size 4 means no resampling.
    img, a = _image(8, 6)
    out = T.train_transform(img, 4, Scripted(uniform=[1 / 3, 0.0], integers=[1, 2], random=[0.9]))
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 4)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), a[1:5, 2:6])
    img, a = _image(8, 6)
    flipped = T.train_transform(img, 4, Scripted(uniform=[1 / 3, 0.0], integers=[1, 2], random=[0.1]))
    assert np.array_equal(flipped.permute(1, 2, 0).numpy(), a[1:5, 2:6][:, ::-1])


def test_train_transform_resizes_the_crop_to_size():
    img, _ = _image(50, 30)
    for seed in range(5):
        out = T.train_transform(img, 16, np.random.default_rng(seed))
        assert out.shape == (3, 16, 16)


def test_eval_sizes_hand_worked():
    assert T.resized_shorter_side(10, 20, 8) == (8, 16)
    assert T.resized_shorter_side(500, 375, 256) == (341, 256)  # int(256 * 500 / 375) = int(341.33)
    assert T.resized_shorter_side(375, 500, 73) == (73, 97)  # round(64 / 0.875) = 73; int(73 * 500 / 375) = 97
    assert T.center_crop_box(8, 16, 7) == (4, 0, 7, 7)  # round(4.5) = 4 and round(0.5) = 0, as torchvision rounds
    assert T.center_crop_box(341, 256, 224) == (16, 58, 224, 224)


def test_eval_transform_center_crop_exact():
    # 8x16 with size 7: the shorter side is already round(7 / 0.875) = 8, so only the crop acts.
    img, a = _image(8, 16)
    out = T.eval_transform(img, 7)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), a[4:11, 0:7])


def test_grayscale_and_palette_images_become_rgb():
    gray = Image.fromarray(np.full((12, 10), 77, dtype=np.uint8))
    out = T.eval_transform(gray, 8)
    assert out.shape == (3, 8, 8) and bool((out == 77).all())
    pal = gray.convert("P")
    assert T.train_transform(pal, 8, np.random.default_rng(0)).shape == (3, 8, 8)


# --------------------------------------------------------------------------------------------- #
# JPEG draft decoding


def test_eval_of_a_large_jpeg_decodes_at_reduced_scale():
    data = _jpeg(1600, 1200)
    img = Image.open(io.BytesIO(data))
    out = T.eval_transform(img, 64)
    # 73 x 97 pixels are needed (shorter side round(64 / 0.875) = 73): libjpeg's 1/8 scale (200 x 150) suffices.
    assert img.size == (200, 150)
    assert out.shape == (3, 64, 64)
    full = T.eval_transform(Image.open(io.BytesIO(data)).convert("RGB"), 64)  # a decoded copy cannot be drafted
    assert (out.float() - full.float()).abs().mean() < 3.0


def test_train_of_a_large_jpeg_matches_full_decoding():
    data = _jpeg(1200, 900, seed=1)
    for seed in range(4):
        drafted = T.train_transform(Image.open(io.BytesIO(data)), 32, T.sample_rng(0, 0, seed))
        full = T.train_transform(Image.open(io.BytesIO(data)).convert("RGB"), 32, T.sample_rng(0, 0, seed))
        assert drafted.shape == full.shape == (3, 32, 32)
        assert (drafted.float() - full.float()).abs().mean() < 4.0


def test_draft_keeps_enough_pixels_for_a_small_crop():
    img = Image.open(io.BytesIO(_jpeg(1600, 1200)))
    s = T._draft(img, 300, 300)  # 1600 // 300 = 5 and 1200 // 300 = 4: scale 1/4 leaves 400 x 300
    assert s == 0.25 and img.size == (400, 300)
    assert T._draft(Image.open(io.BytesIO(_jpeg(64, 48))), 40, 40) == 1.0  # nothing to gain
    png = io.BytesIO()
    Image.new("RGB", (800, 800)).save(png, "PNG")
    assert T._draft(Image.open(png), 10, 10) == 1.0  # only JPEGs have draft mode


# --------------------------------------------------------------------------------------------- #
# Determinism


def test_sample_rng_depends_only_on_seed_epoch_and_index():
    img = Image.open(io.BytesIO(_jpeg(300, 200)))
    img.load()
    a = T.train_transform(img, 24, T.sample_rng(3, 1, 17))
    b = T.train_transform(img, 24, T.sample_rng(3, 1, 17))
    assert torch.equal(a, b)
    draws = {key: T.sample_rng(*key).random() for key in [(3, 1, 17), (3, 1, 18), (3, 2, 17), (4, 1, 17)]}
    assert len(set(draws.values())) == 4
    with pytest.raises(ConfigError):
        T.sample_rng(-1, 0, 0)


@pytest.mark.skipif(T.TF is None, reason="torchvision does not import here")
def test_torchvision_and_pil_paths_give_the_same_pixels(monkeypatch):
    img, _ = _image(97, 61)
    with_tv = [T.train_transform(img, 32, np.random.default_rng(i)) for i in range(4)] + [T.eval_transform(img, 32)]
    monkeypatch.setattr(T, "TF", None)
    pil = [T.train_transform(img, 32, np.random.default_rng(i)) for i in range(4)] + [T.eval_transform(img, 32)]
    assert all(torch.equal(a, b) for a, b in zip(with_tv, pil))
