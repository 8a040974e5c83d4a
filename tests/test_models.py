"""Architectures: parameter counts from the papers, shapes, widths, and the registry's errors."""

import pytest
import torch

from supermask import ConfigError, build_model
from supermask.convert import eligible_layers
from supermask.models import BasicBlock, ResNet


def masked_count(model):
    return sum(layer.weight.numel() for _, layer in eligible_layers(model))


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
