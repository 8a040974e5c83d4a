"""IteRand's published CIFAR pipeline as options: augment_crop=pad-resized and normalization=imagenet."""

import pytest
import torch

from supermask import ConfigError
from supermask.data import load_dataset, normalized_as
from supermask.data.batches import augment_batch, resized_crop, train_batches


def test_a_resized_crop_of_the_whole_image_is_the_image():
    # scale (1, 1) and ratio (1, 1) on a square image: every box is the whole image, resized to its own size
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = resized_crop(x, (12, 12), torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(out, x)


def test_a_resized_crop_of_a_quarter_is_the_2x2_means_of_one_8x8_box():
    # a quarter of the area of a 16 x 16 image at ratio 1 is an 8 x 8 box; halving it to 4 x 4 bilinearly samples
    # each output pixel midway between four input pixels: the mean of a 2 x 2 block of the box
    x = (torch.arange(256).view(1, 1, 16, 16) * 7 % 251).to(torch.uint8)
    out = resized_crop(x, (4, 4), torch.Generator().manual_seed(3), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    means = {(i, j): torch.nn.functional.avg_pool2d(x[:, :, i:i + 8, j:j + 8].float(), 2).round().to(torch.uint8)
             for i in range(9) for j in range(9)}
    assert sum(torch.equal(out, m) for m in means.values()) == 1


def test_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    # many draws on a 40 x 40 (CIFAR padded by 4): areas in [0.08, 1] of 1600, sides at most 40
    x = torch.zeros(4000, 1, 40, 40, dtype=torch.uint8)
    x[:, :, 20, 20] = 255  # a bright pixel in the centre: a box holding it shows it, larger boxes show it smaller
    out = resized_crop(x, (32, 32), torch.Generator().manual_seed(0))
    assert out.shape == (4000, 1, 32, 32) and out.dtype == torch.uint8
    seen = (out > 0).flatten(1).any(1).float().mean().item()
    assert 0.3 < seen < 1.0  # some boxes miss the centre, many hold it


def test_skipping_batches_draws_what_the_batches_drew():
    ds = load_dataset("digits")
    full = list(train_batches(ds, 256, seed=1, epoch=0, augment=True, crop="pad-resized"))
    resumed = list(train_batches(ds, 256, seed=1, epoch=0, augment=True, crop="pad-resized", start_batch=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], resumed))
    plain = list(train_batches(ds, 256, seed=1, epoch=0, augment=True))
    assert not torch.equal(plain[0][0], full[0][0])
    with pytest.raises(ConfigError, match="unknown augment_crop 'resized'"):
        augment_batch(ds.train_x[:2], torch.Generator(), crop="resized")


def test_imagenet_normalization_replaces_the_mean_and_std():
    ds = load_dataset("digits")
    with pytest.raises(ConfigError, match="normalization=imagenet replaces the mean and std of RGB images"):
        normalized_as(ds, "imagenet")
    rgb = type(ds)(**{**{f: getattr(ds, f) for f in ("name", "train_y", "test_y", "classes", "source", "augment")},
                      "train_x": ds.train_x.expand(-1, 3, -1, -1), "test_x": ds.test_x.expand(-1, 3, -1, -1),
                      "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
    net = normalized_as(rgb, "imagenet")
    assert net.mean == (0.485, 0.456, 0.406) and net.std == (0.229, 0.224, 0.225)
    x, _ = next(train_batches(net, 4, seed=0, epoch=0, augment=False))
    pixel = rgb.train_x[torch.randperm(len(rgb.train_y), generator=_gen(0))[:4]].float() / 255
    expected = (pixel - torch.tensor(net.mean).view(1, 3, 1, 1)) / torch.tensor(net.std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)


def _gen(seed):
    from supermask.data.batches import _epoch_generator

    return _epoch_generator(seed, 0)


def test_a_run_with_iterands_pipeline_exports_and_evaluates_with_its_normalization(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from supermask.cli import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for label in ("a", "b"):
            (tmp_path / "set" / split / label).mkdir(parents=True)
            for i in range(n):
                shade = 60 if label == "a" else 190
                pixels = np.clip(rng.normal(shade, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "set" / split / label / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "digits", f"dataset={tmp_path / 'set'}", "model=conv2", "width=0.1", "epochs=2",
                 "batch_size=8", "augment=true", "augment_crop=pad-resized", "normalization=imagenet",
                 f"out_dir={out}", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert main(["export", str(out), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_acc"] == result["recorded_test_acc"] and result["same_data_as_run"] is True
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-6)  # the inputs normalized as in training
    capsys.readouterr()
    assert main(["train", "digits", "normalization=imagenet", "out_dir=" + str(tmp_path / "bad"), "--quiet"]) == 2
    assert "normalization=imagenet replaces the mean and std of RGB images" in capsys.readouterr().err
