"""The architectures of the papers, in a registry: `build_model(name, ...)`.

Masked layers carry no biases and ResNets use non-affine BatchNorm, as in the papers' code, so that every
learned quantity of a mask search is a score. `width` scales every hidden width (int(n * width)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import ConfigError


class _ContiguousKeepGradLayout(torch.autograd.Function):
    """x.contiguous(), whose gradient goes back in x's own layout. Flattening a channels-last activation otherwise
    hands the max-pool before it a channels-first gradient, and its CPU backward then converts every 4-D tensor
    it touches (measured: 2 copies of 8M floats per Conv-2 step, 10% of the step)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ARG004
        x = inputs[0]
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class Flatten(nn.Flatten):
    """nn.Flatten that keeps a channels-last network's gradients channels-last (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = _ContiguousKeepGradLayout.apply(x)
        return super().forward(x)


def _scaled(n: int, width: float) -> int:
    return max(1, int(n * width))


def conv_net(pairs: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Sequential:
    """Conv-2/4/6/8 (Frankle & Carbin): `pairs` pairs of 3x3 convs (64, 128, 256, 512 channels), each pair
    followed by a 2x2 max-pool, then FC 256-256-num_classes."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in (64, 128, 256, 512)[:pairs]:
        c = _scaled(c, width)
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c
    side = image_size // 2**pairs
    if side < 1:
        raise ConfigError(f"conv{2 * pairs} needs images of at least {2**pairs} pixels, got {image_size}")
    hidden = _scaled(256, width)
    layers += [Flatten(), nn.Linear(c_in * side * side, hidden, bias=False), nn.ReLU(inplace=True),
               nn.Linear(hidden, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes, bias=False)]
    return nn.Sequential(*layers)


def mlp(sizes: tuple[int, ...], *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: float = 1.0) -> nn.Sequential:
    """A fully-connected ReLU network over flattened images (LeNet-300-100 is sizes (300, 100))."""
    layers: list[nn.Module] = [Flatten()]
    n_in = in_channels * image_size * image_size
    for n in sizes:
        n = _scaled(n, width)
        layers += [nn.Linear(n_in, n, bias=False), nn.ReLU(inplace=True)]
        n_in = n
    layers.append(nn.Linear(n_in, num_classes, bias=False))
    return nn.Sequential(*layers)


def small_conv(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: float = 1.0) -> nn.Sequential:
    """A small conv net for the embedded 8x8 digits: two 3x3 convs, a max-pool, then FC 256-num_classes."""
    c = _scaled(64, width)
    side = image_size // 2
    hidden = _scaled(256, width)
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        Flatten(), nn.Linear(c * side * side, hidden, bias=False), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes, bias=False),
    )


class StridedPointwise(nn.Conv2d):
    """A strided 1x1 convolution (a ResNet shortcut), computed as a stride-1 one on the subsampled input: the same
    sums, and it steers clear of a heap corruption in oneDNN's channels-last weight gradient of strided 1x1
    convolutions on one thread (torch 2.13, seen at 4 -> 8 channels: ResNet-18 width 1/16 in a sweep worker)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return nn.functional.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, self.dilation, self.groups)


def _norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = _norm(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = _norm(c)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(StridedPointwise(c_in, c, 1, stride, bias=False), _norm(c))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        c_out = c * self.expansion
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = _norm(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = _norm(c)
        self.conv3 = nn.Conv2d(c, c_out, 1, bias=False)
        self.bn3 = _norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(StridedPointwise(c_in, c_out, 1, stride, bias=False), _norm(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 conv, no max-pool) or an ImageNet stem (7x7 stride 2 + max-pool)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], *, num_classes: int,
                 in_channels: int, width: float, imagenet_stem: bool):
        super().__init__()
        c = _scaled(64, width)
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 7, 2, 3, bias=False), _norm(c), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), _norm(c), nn.ReLU(inplace=True))
        stages = []
        c_in = c
        for i, depth in enumerate(depths):
            c_stage = _scaled(64 * 2**i, width)
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, c_stage, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_stage * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet18(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-18 (3x3 stem, no max-pool)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width, imagenet_stem=False)


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, width: float = 1.0) -> ResNet:
    """ResNet-50 for 224-pixel inputs (ImageNet stem)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, width=width, imagenet_stem=True)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv2": lambda **kw: conv_net(1, **kw),
    "conv4": lambda **kw: conv_net(2, **kw),
    "conv6": lambda **kw: conv_net(3, **kw),
    "conv8": lambda **kw: conv_net(4, **kw),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "lenet300": lambda **kw: mlp((300, 100), **kw),
    "small-conv": small_conv,
}


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    """Build a registered architecture for the given input shape and number of classes."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    if not width > 0:
        raise ConfigError(f"width {width!r} must be > 0")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)
