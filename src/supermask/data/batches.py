"""Deterministic batching of in-memory datasets, normalization and GPU-friendly augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from supermask.errors import ConfigError

from .base import _SPLITS, Dataset
from .shard_dataset import ShardDataset, shard_eval_loader, shard_steps, shard_train_loader
from .stream import ImageList, ImageStream, StreamDataset, replaced_tally, stream_loader
from .transforms import EVAL_CROP_FRACTION

PIXEL_SCALE = 1 / 255  # uint8 pixels to [0, 1], as `normalize` divides by 255


@dataclass
class ReplacedCount:
    """Samples of a streamed pass whose image could not be read or decoded and was replaced by another (a warning
    names each file); `train_batches` and `eval_batches` add to it as their batches come."""

    count: int = 0


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., C, H, W) in 0..255 -> float32 ((x/255) - mean) / std per channel, on x's device."""
    c = x.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"normalize: {c} channels but {len(mean)} means and {len(std)} stds")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(c, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def model_inputs(ds: Dataset | StreamDataset | ShardDataset) -> dict[str, int]:
    """What a model is built from for this data (`supermask.models.build_model`): the classes, and the images'
    channels and size, or the tokens' vocabulary and sequence length."""
    if ds.tokens:
        return {"num_classes": ds.num_classes, "vocab_size": ds.vocab_size, "seq_len": ds.seq_len}
    return {"num_classes": ds.num_classes, "in_channels": ds.in_channels, "image_size": ds.image_size}


def preprocessing(ds: Dataset | StreamDataset | ShardDataset) -> dict[str, Any]:
    """What turns a picture into the model's input, as a deployment must repeat it: channel order, the size and how
    an image is brought to it (the whole image resized to it, as sets held in memory are read; or streamed sets'
    evaluation crop), then x = (pixel * scale - mean[c]) / std[c]; and the class names, output i being classes[i].
    Token data reads its ids as they are: only the classes."""
    classes = [str(c) for c in ds.classes]
    if ds.tokens:
        return {"input": "tokens", "classes": classes}
    streamed = is_streamed(ds)
    return {"input": "images", "channel_order": "RGB" if ds.in_channels == 3 else "L", "image_size": ds.image_size,
            "resize": "center-crop" if streamed else "whole",
            **({"crop_fraction": EVAL_CROP_FRACTION} if streamed else {}),
            "scale": PIXEL_SCALE, "mean": [float(m) for m in ds.mean], "std": [float(s) for s in ds.std],
            "classes": classes}


CROPS = ("pad", "pad-resized")  # a random crop of the padded image; or a random-resized crop of it (IteRand's)
_RESIZED_TRIES = 10  # torchvision RandomResizedCrop's attempts at a box inside the image


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True,
                  crop: str = "pad") -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorized over a uint8 (B,C,H,W) batch; with
    `crop="pad-resized"`, a random-resized crop of the padded image back to (H, W) instead (`resized_crop`).

    Random numbers come from ``generator`` on the CPU and only then move to x's device, so a batch
    is augmented identically on every device.
    """
    if pad < 0:
        raise ConfigError(f"augment pad must be >= 0, got {pad}")
    if crop not in CROPS:
        raise ConfigError(f"unknown augment_crop {crop!r}: expected one of {', '.join(CROPS)}")
    b, c, h, w = x.shape
    out = x
    if crop == "pad-resized":
        out = resized_crop(F.pad(x, (pad, pad, pad, pad)), (h, w), generator)
    elif pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(flipped, out.flip(3), out)
    return out.contiguous()


def resized_crop(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop over a uint8 (B,C,H,W) batch, vectorized: each image's box is the first of 10
    tries (area a fraction U(scale) of the image's, aspect ratio log-uniform in `ratio`, rounded sides) that fits,
    else the whole image, at a uniform position; the box is resized to `size` bilinearly (without antialiasing).
    Every batch of B images draws the same numbers, whatever they hold."""
    b, _, h, w = x.shape
    area = torch.empty(b, _RESIZED_TRIES).uniform_(*scale, generator=generator) * (h * w)
    aspect = torch.exp(torch.empty(b, _RESIZED_TRIES).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    where = torch.rand(b, _RESIZED_TRIES, 2, generator=generator)
    bw, bh = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
    first = torch.where(fits.any(1), fits.int().argmax(1), -1)  # -1: none fits, the whole image
    rows = torch.arange(b)
    bw = torch.where(first >= 0, bw[rows, first.clamp_min(0)], torch.tensor(float(w)))
    bh = torch.where(first >= 0, bh[rows, first.clamp_min(0)], torch.tensor(float(h)))
    pick = where[rows, first.clamp_min(0)]
    top = torch.floor(pick[:, 0] * (h - bh + 1)).clamp_max(h - bh)
    left = torch.floor(pick[:, 1] * (w - bw + 1)).clamp_max(w - bw)
    # The box as an affine map of the output's normalized coordinates onto the input's (align_corners=False)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = bw / w, (2 * left + bw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / h, (2 * top + bh) / h - 1
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, (b, x.shape[1], *size), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(x.dtype)


def check_augment(ds: Dataset, augment: bool | None) -> None:
    """Augmentation crops and flips images: refuse it for token data."""
    if augment and ds.tokens:
        raise ConfigError(f"augment=true crops and flips images; dataset {ds.name} is token sequences (use augment=false)")


def _inputs(ds: Dataset, x: torch.Tensor) -> torch.Tensor:
    """What the model reads: normalized float images, or the token ids themselves."""
    return x if ds.tokens else normalize(x, ds.mean, ds.std)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch): shuffling + augmentation of one epoch."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def on_device(ds: Dataset, device: torch.device | str, *, budget: float = 0.5) -> Dataset:
    """`ds` with its uint8 tensors resident on a GPU when they take at most `budget` of its free memory, so batches
    are drawn and augmented there without host-to-device copies; otherwise (and on CPUs) `ds` itself."""
    device = torch.device(device)
    if not isinstance(ds, Dataset) or device.type != "cuda" or ds.train_x.device == device:
        return ds
    size = sum(t.numel() * t.element_size() for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y))
    free, _ = torch.cuda.mem_get_info(device)
    if size > budget * free:
        return ds
    return replace(ds, train_x=ds.train_x.to(device), train_y=ds.train_y.to(device), test_x=ds.test_x.to(device),
                   test_y=ds.test_y.to(device))


def _part(t: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Process `rank`'s contiguous part of `t` when it is split among `world` processes."""
    rank, world = shard
    return torch.tensor_split(t, world)[rank] if world > 1 else t


def is_streamed(ds: object) -> bool:
    """Whether `ds` is read lazily (an image folder or shards) rather than held in memory."""
    return isinstance(ds, (StreamDataset, ShardDataset))


def train_steps(ds: Dataset, batch_size: int, *, seed: int = 0, epoch: int = 0, world: int = 1) -> int:
    """Steps of a training epoch: every batch, the last one short, except with shards, where each process reads
    its own and all stop after the smallest part's full batches (see `shard_dataset`), so it depends on the epoch."""
    _check_batch_size(batch_size)
    if isinstance(ds, ShardDataset):
        return shard_steps(ds, batch_size, seed=seed, epoch=epoch, world=world)
    return -(-len(ds.train_y) // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def train_batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    augment: bool,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    start_batch: int = 0,
    replaced: ReplacedCount | None = None,
    crop: str = "pad",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float32 normalized images, int64 labels) on device; the last batch may be short.
    A streamed set adds the samples it replaced (unreadable images) to `replaced`.

    Order and augmentation depend only on (seed, epoch), so resuming at an epoch reproduces it exactly, and
    `start_batch` skips the epoch's first batches (resuming inside it) yielding the same batches after them.
    `crop` is the augmentation's crop of a set held in memory (`augment_batch`; streamed sets take theirs).
    With shard=(rank, world), each global batch is drawn and augmented whole, and this process gets its
    contiguous slice (data-parallel training sees exactly the batches of a single process); from shards, each
    process reads batch_size / world samples a step from its own shards, `train_steps` batches.
    """
    _check_batch_size(batch_size)
    check_augment(ds, augment)
    if crop != "pad" and isinstance(ds, (StreamDataset, ShardDataset)):
        raise ConfigError(f"augment_crop={crop} crops sets held in memory; {ds.name} is streamed, and streamed images "
                          "take a RandomResizedCrop already")
    if start_batch < 0:
        raise ConfigError(f"start_batch must be >= 0, got {start_batch}")
    if isinstance(ds, StreamDataset):
        yield from _stream_batches(ds, ds.index.train, batch_size, augment=augment, shuffle=True, seed=seed,
                                   epoch=epoch, device=device, shard=shard, start_batch=start_batch, replaced=replaced)
        return
    if isinstance(ds, ShardDataset):
        device = torch.device(device)
        tally = replaced_tally(ds.num_workers)
        loader = shard_train_loader(ds, batch_size, seed=seed, epoch=epoch, augment=augment, rank=shard[0],
                                    world=shard[1], start_batch=start_batch, pin_memory=device.type == "cuda",
                                    tally=tally)
        yield from _normalized(ds, loader, device, tally, replaced)
        return
    gen = _epoch_generator(seed, epoch)
    order = torch.randperm(len(ds.train_y), generator=gen)
    for i, start in enumerate(range(0, len(order), batch_size)):
        if i < start_batch:
            if augment:  # the skipped batch's draws, on a 1-pixel stand-in, leave `gen` where the epoch had it
                augment_batch(torch.zeros(len(order[start : start + batch_size]), 1, 1, 1, dtype=torch.uint8), gen,
                              crop=crop)
            continue
        idx = order[start : start + batch_size].to(ds.train_x.device)
        x = ds.train_x.index_select(0, idx).to(device, non_blocking=True)
        y = ds.train_y.index_select(0, idx).to(device, non_blocking=True)
        if augment:
            x = augment_batch(x, gen, crop=crop)
        yield _inputs(ds, _part(x, shard)), _part(y, shard)


def eval_batches(
    ds: Dataset, batch_size: int, *, split: str = "test", device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1), replaced: ReplacedCount | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train or test split in order, normalized, without augmentation (with shard=(rank, world): this
    process's contiguous part of it). A streamed set adds the samples it replaced to `replaced`."""
    _check_batch_size(batch_size)
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(ds, StreamDataset):
        images = ds.index.train if split == "train" else ds.index.test
        yield from _stream_batches(ds, images, batch_size, augment=False, shuffle=False, device=device, shard=shard,
                                   replaced=replaced)
        return
    if isinstance(ds, ShardDataset):
        device = torch.device(device)
        tally = replaced_tally(ds.num_workers)
        loader = shard_eval_loader(ds, batch_size, split=split, rank=shard[0], world=shard[1],
                                   pin_memory=device.type == "cuda", tally=tally)
        yield from _normalized(ds, loader, device, tally, replaced)
        return
    xs, ys = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    xs, ys = _part(xs, shard), _part(ys, shard)
    for start in range(0, len(ys), batch_size):
        x = xs[start : start + batch_size].to(device, non_blocking=True)
        y = ys[start : start + batch_size].to(device, non_blocking=True)
        yield _inputs(ds, x), y


def _stream_batches(
    ds: StreamDataset, images: ImageList, batch_size: int, *, augment: bool, shuffle: bool, seed: int = 0,
    epoch: int = 0, device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1), start_batch: int = 0,
    replaced: ReplacedCount | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a streamed split, decoded in ds.num_workers DataLoader workers and normalized on `device`."""
    device = torch.device(device)
    tally = replaced_tally(ds.num_workers)
    stream = ImageStream(images, ds.image_size, augment=augment, seed=seed, tally=tally)
    loader = stream_loader(stream, batch_size, shuffle=shuffle, epoch=epoch, rank=shard[0], world=shard[1],
                           start_batch=start_batch, num_workers=ds.num_workers, pin_memory=device.type == "cuda")
    yield from _normalized(ds, loader, device, tally, replaced)


def _normalized(ds: StreamDataset | ShardDataset, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, tally: torch.Tensor | None = None,
                replaced: ReplacedCount | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A loader's uint8 batches normalized on `device`; a DataLoader worker's error in its own words. The workers'
    `tally` of replaced samples is added to `replaced` as each batch comes (a checkpoint inside the pass sees it)."""
    start = replaced.count if replaced is not None else 0
    try:
        for x, y in loader:
            if replaced is not None and tally is not None:
                replaced.count = start + int(tally.sum())
            yield normalize(x.to(device, non_blocking=True), ds.mean, ds.std), y.to(device, non_blocking=True)
    except ConfigError as e:
        raise ConfigError(_worker_message(str(e))) from None


def _worker_message(message: str) -> str:
    """The original one-line message of an error a DataLoader worker raised (the DataLoader re-raises it with the
    worker's traceback as its text)."""
    lines = message.strip().splitlines()
    if len(lines) < 2 or "DataLoader worker" not in lines[0]:
        return message
    return lines[-1].partition(": ")[2] or lines[-1]
