"""Architectures: parameter counts from the papers, shapes, widths, and the registry's errors."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from supermask import ConfigError, build_model
from supermask.core.convert import weight_tensors
from supermask.models import BasicBlock, ResNet


def masked_count(model):
    return sum(t.numel() for t in weight_tensors(model).values())


@pytest.mark.parametrize("name, count", [("conv2", 4_300_992), ("conv4", 2_425_024), ("conv6", 2_261_184), ("conv8", 5_275_840)])
def test_conv_counts_match_the_paper(name, count):
    model = build_model(name)
    assert masked_count(model) == count
    assert sum(p.numel() for p in model.parameters()) == count  # no biases, no other parameters
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_conv4_width_multiplier():
    model = build_model("conv4", width=0.25)
    # convs 16,16,32,32; FC 8*8*32 -> 64 -> 64 -> 10
    expected = 3 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 2048 * 64 + 64 * 64 + 64 * 10
    assert masked_count(model) == expected


def test_resnet18():
    model = build_model("resnet18")
    # CIFAR ResNet-18 (3x3 stem, 10 classes): 11,164,352 conv + fc weights
    assert masked_count(model) == 11_164_352
    assert all(not bn.affine for bn in model.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # The paper's 11,678,912 counts the ImageNet-style ResNet-18 (7x7 stem, 1000 classes)
    imagenet = ResNet(BasicBlock, (2, 2, 2, 2), num_classes=1000, in_channels=3, width=1.0, imagenet_stem=True)
    assert masked_count(imagenet) == 11_678_912


def test_resnet50_and_lenet():
    assert masked_count(build_model("resnet50", num_classes=1000, image_size=224)) == 25_502_912
    lenet = build_model("lenet300", in_channels=1, image_size=28)
    assert masked_count(lenet) == 784 * 300 + 300 * 100 + 100 * 10
    assert lenet(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_small_conv_for_digits():
    model = build_model("small-conv", in_channels=1, image_size=8)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_unknown_model_and_bad_width():
    with pytest.raises(ConfigError, match="'vgg'.*conv4"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="width"):
        build_model("conv4", width=0)


def test_strided_pointwise_equals_a_strided_1x1_conv():
    from supermask.models import StridedPointwise

    torch.manual_seed(0)
    ours = StridedPointwise(4, 8, 1, 2, bias=False)
    plain = nn.Conv2d(4, 8, 1, 2, bias=False)
    plain.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    a, b = ours(x), plain(x)
    assert torch.equal(a, b)
    g = torch.randn_like(a)
    ga, = torch.autograd.grad(a, x, g)
    gb, = torch.autograd.grad(b, x, g)
    assert torch.equal(ga, gb)


def test_a_channels_last_resnet18_trains_on_one_thread():
    # torch 2.13's oneDNN corrupted the heap in the weight gradient of a channels-last strided 1x1 conv with 4 -> 8
    # channels on one thread (ResNet-18 width 1/16 in a sweep worker); the process died with "free(): invalid pointer"
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from supermask import build_model, convert\n"
        "m = convert(build_model('resnet18', width=1 / 16), 'biprop', 0.5).to(memory_format=torch.channels_last)\n"
        "for _ in range(20):\n"
        "    x = torch.randn(64, 3, 8, 8).contiguous(memory_format=torch.channels_last)\n"
        "    m(x).sum().backward()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]


def test_affine_batchnorm_starts_as_the_identity_scale_and_trains_in_a_dense_run(tmp_path):
    from supermask.run.config import make_config
    from supermask.run.train import evaluate_run, run

    plain, affine = build_model("resnet20", width=0.25), build_model("resnet20", width=0.25, affine_bn=True)
    norms = [m for m in affine.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.affine and torch.equal(m.weight, torch.ones(m.num_features))
                         and torch.equal(m.bias, torch.zeros(m.num_features)) for m in norms)
    assert not any(m.affine for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    # scale 1 and shift 0: the same function as the non-affine network at the start
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain(x), affine(x))
    with pytest.raises(ConfigError, match="model conv4 has no BatchNorm"):
        build_model("conv4", affine_bn=True)

    out = tmp_path / "dense"
    cfg = make_config(None, {"model": "resnet20", "width": 0.25, "dataset": "digits", "method": "dense",
                             "affine_bn": True, "epochs": 1, "max_steps": 3, "batch_size": 128,
                             "out_dir": str(out)})
    summary = run(cfg, progress=False)
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        scale = next(f.get_tensor(k) for k in f.keys() if k.endswith("bn1.weight"))
    assert not torch.equal(scale, torch.ones_like(scale))  # learned
    assert evaluate_run(out)["test_acc"] == summary["test_acc"]  # rebuilt with its affine BatchNorm
    with pytest.raises(ConfigError, match="affine_bn=true learns BatchNorm's scale and shift in a dense run"):
        make_config(None, {"model": "resnet20", "dataset": "digits", "affine_bn": True})
    with pytest.raises(ConfigError, match="learned BatchNorm's scale and shift"):
        make_config(None, {"model": "resnet20", "width": 0.25, "dataset": "digits", "init_from": str(out)})
