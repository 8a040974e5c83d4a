"""The architectures of the papers, in a registry: `build_model(name, ...)`.

Masked layers carry no biases and ResNets use non-affine BatchNorm, as in the papers' code, so that every
learned quantity of a mask search is a score. `width` scales every hidden width (int(n * width)). The transformers
follow the same rule: no biases and non-affine LayerNorm, built from standard torch.nn layers (Conv2d, Embedding,
TransformerEncoderLayer with its MultiheadAttention, Linear) so that `convert` treats them like any other model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from supermask.compat import Flatten, StridedPointwise
from supermask.errors import ConfigError


def _scaled(n: int, width: float) -> int:
    return max(1, int(n * width))


def conv_net(pairs: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
             activation: Callable[..., nn.Module] = nn.ReLU) -> nn.Sequential:
    """Conv-2/4/6/8 (Frankle & Carbin): `pairs` pairs of 3x3 convs (64, 128, 256, 512 channels), each pair
    followed by a 2x2 max-pool, then FC 256-256-num_classes; ReLU, or `activation` (the -elu models: ELU, alpha 1,
    as the signed-supermask paper's networks)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in (64, 128, 256, 512)[:pairs]:
        c = _scaled(c, width)
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), activation(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), activation(inplace=True), nn.MaxPool2d(2)]
        c_in = c
    side = image_size // 2**pairs
    if side < 1:
        raise ConfigError(f"conv{2 * pairs} needs images of at least {2**pairs} pixels, got {image_size}")
    hidden = _scaled(256, width)
    layers += [Flatten(), nn.Linear(c_in * side * side, hidden, bias=False), activation(inplace=True),
               nn.Linear(hidden, hidden, bias=False), activation(inplace=True), nn.Linear(hidden, num_classes, bias=False)]
    return nn.Sequential(*layers)


def mlp(sizes: tuple[int, ...], *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: float = 1.0,
        activation: Callable[..., nn.Module] = nn.ReLU) -> nn.Sequential:
    """A fully-connected ReLU (or `activation`) network over flattened images (LeNet-300-100 is sizes (300, 100))."""
    layers: list[nn.Module] = [Flatten()]
    n_in = in_channels * image_size * image_size
    for n in sizes:
        n = _scaled(n, width)
        layers += [nn.Linear(n_in, n, bias=False), activation(inplace=True)]
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


class PadShortcut(nn.Module):
    """He et al. 2016's CIFAR shortcut "option A": no weights; a stride-2 block subsamples x and pads the new
    channels with zeros, half before and half after (akamaster/pytorch_resnet_cifar10, which Gem-Miner uses)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride, self.before, self.after = stride, (c_out - c_in) // 2, c_out - c_in - (c_out - c_in) // 2

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class CifarBlock(BasicBlock):
    """ResNet-20's block: BasicBlock with the weightless option-A shortcut."""

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__(c, c)  # no projection shortcut is made
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        if stride != 1 or c_in != c:
            self.shortcut = PadShortcut(c_in, c, stride)


class ResNet20(nn.Module):
    """He et al. 2016's CIFAR ResNet-20: a 3x3 conv to 16 channels, 3 stages of 3 basic blocks of 16/32/64 channels
    (strides 1/2/2, option-A shortcuts), global average pooling and a linear head; 268,336 weights at width 1."""

    def __init__(self, *, num_classes: int, in_channels: int, width: float):
        super().__init__()
        c = _scaled(16, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), _norm(c), nn.ReLU(inplace=True))
        stages, c_in = [], c
        for i in range(3):
            c_stage = _scaled(16 * 2**i, width)
            stages.append(nn.Sequential(*(CifarBlock(c_in if j == 0 else c_stage, c_stage, 2 if i > 0 and j == 0 else 1)
                                          for j in range(3))))
            c_in = c_stage
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet20(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> ResNet20:
    """CIFAR ResNet-20 (He et al. 2016), the network of Gem-Miner's published configs."""
    return ResNet20(num_classes=num_classes, in_channels=in_channels, width=width)


def _layer_norm(d: int) -> nn.LayerNorm:
    # Non-affine, like the ResNets' BatchNorm: a mask search trains only scores, and dense training gets the
    # same architecture.
    return nn.LayerNorm(d, elementwise_affine=False)


def _encoder(d: int, heads: int, mlp: int, depth: int) -> nn.TransformerEncoder:
    """`depth` pre-norm blocks (x + attn(LN(x)), x + MLP(LN(x)), GELU, no dropout, no biases), then a final LN."""
    block = nn.TransformerEncoderLayer(d, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True, bias=False)
    block.norm1, block.norm2 = _layer_norm(d), _layer_norm(d)
    # Pre-norm blocks never take PyTorch's nested-tensor path (it would only warn about it).
    return nn.TransformerEncoder(block, depth, norm=_layer_norm(d), enable_nested_tensor=False)


def _transformer_dim(base: int, width: float, heads: int) -> int:
    """int(base * width) rounded to a multiple of the head count (at least one per head)."""
    return heads * max(1, round(_scaled(base, width) / heads))


def vit_patch_size(image_size: int) -> int:
    """4 (an 8x8 grid of patches on 32-pixel images); images under 16 pixels use 2 (digits' 8x8: a 4x4 grid)."""
    patch = 4 if image_size >= 16 else 2
    if image_size % patch:
        raise ConfigError(f"vit needs an image side divisible by its patch size {patch}, got {image_size}")
    return patch


class ViT(nn.Module):
    """A small Vision Transformer: ViT-Lite-7/4 of Hassani et al. 2021 ("Escaping the Big Data Paradigm with
    Compact Transformers"): patch 4 embedded by a strided Conv2d, learned position embedding (an nn.Embedding
    with one row per patch), 7 pre-norm blocks of 4 heads, dim 256 * width, MLP 2 * dim, then a final LayerNorm,
    the mean over patches (instead of their class token) and a Linear head."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
                 dim: int = 256, depth: int = 7, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        patch = vit_patch_size(image_size)
        d = _transformer_dim(dim, width, heads)
        self.patch_embed = nn.Conv2d(in_channels, d, patch, stride=patch, bias=False)
        self.pos_embed = nn.Embedding((image_size // patch) ** 2, d)
        nn.init.normal_(self.pos_embed.weight, std=0.02)  # ViT's init of the position embedding
        self.encoder = _encoder(d, heads, mlp_ratio * d, depth)
        self.head = nn.Linear(d, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, d)
        x = self.encoder(x + self.pos_embed.weight)
        return self.head(x.mean(1))


class TextTransformer(nn.Module):
    """A sequence classifier over token ids (0 is padding): token and learned position embeddings (nn.Embedding),
    pre-norm encoder blocks whose attention ignores padding, the mean over the real tokens and a Linear head.
    The sizes are the Long Range Arena ListOps model of the Nystromformer code (Xiong et al. 2021,
    github.com/mlpen/Nystromformer, LRA/code): dim 64 * width, 2 heads, 2 blocks, MLP 2 * dim, mean pooling."""

    def __init__(self, *, num_classes: int, vocab_size: int, max_len: int, width: float = 1.0, dim: int = 64,
                 depth: int = 2, heads: int = 2, mlp_ratio: int = 2):
        super().__init__()
        d = _transformer_dim(dim, width, heads)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos_embed = nn.Embedding(max_len, d)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        self.encoder = _encoder(d, heads, mlp_ratio * d, depth)
        self.head = nn.Linear(d, num_classes, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        x = self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        x = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1).clamp_min(1))


def text_transformer(*, num_classes: int = 10, vocab_size: int = 16, seq_len: int = 128,
                     width: float = 1.0) -> TextTransformer:
    return TextTransformer(num_classes=num_classes, vocab_size=vocab_size, max_len=seq_len, width=width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv2": lambda **kw: conv_net(1, **kw),
    "conv4": lambda **kw: conv_net(2, **kw),
    "conv6": lambda **kw: conv_net(3, **kw),
    "conv8": lambda **kw: conv_net(4, **kw),
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet50": resnet50,
    "lenet300": lambda **kw: mlp((300, 100), **kw),
    "fc1024": lambda **kw: mlp((1024, 1024), **kw),  # SupSup's permuted-MNIST network, 784-1024-1024-10, no biases
    # ELU variants: the networks of the signed-supermask paper (Koster et al. 2022), ELU with alpha 1, no BN
    **{f"conv{2 * n}-elu": (lambda n: lambda **kw: conv_net(n, activation=nn.ELU, **kw))(n) for n in (1, 2, 3, 4)},
    "lenet300-elu": lambda **kw: mlp((300, 100), activation=nn.ELU, **kw),
    "small-conv": small_conv,
    "vit": ViT,
    "text-transformer": text_transformer,
}
# The architectures that read int64 token ids (N, length), 0 the padding; the others read float images (N, C, H, W).
TOKEN_MODELS = frozenset({"text-transformer"})


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                vocab_size: int | None = None, seq_len: int | None = None, width: float = 1.0,
                affine_bn: bool = False) -> nn.Module:
    """Build a registered architecture for the given number of classes and input: images of `in_channels` and
    `image_size` pixels, or, for the token models (TOKEN_MODELS), sequences of `seq_len` ids below `vocab_size`
    (`supermask.data.model_inputs(ds)` gives the ones a dataset holds). `affine_bn` gives every BatchNorm a learned
    scale and shift (1 and 0 at first)."""
    model = _build(name, num_classes, in_channels, image_size, vocab_size, seq_len, width)
    return make_batchnorm_affine(model, name) if affine_bn else model


def make_batchnorm_affine(model: nn.Module, name: str = "the model") -> nn.Module:
    """Give each non-affine BatchNorm of `model` a learned scale (ones) and shift (zeros), in place: the published
    dense ResNet-18's LearnedBatchNorm, where the mask searches' is non-affine."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ConfigError(f"affine_bn=true learns BatchNorm's scale and shift; model {name} has no BatchNorm")
    for m in norms:
        if not m.affine:
            m.affine = True
            m.weight = nn.Parameter(torch.ones(m.num_features))
            m.bias = nn.Parameter(torch.zeros(m.num_features))
    return model


def _build(name: str, num_classes: int, in_channels: int, image_size: int, vocab_size: int | None,
           seq_len: int | None, width: float) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    if not width > 0:
        raise ConfigError(f"width {width!r} must be > 0")
    # PyTorch's default inits draw from the global generator; a fixed seed makes a build the same in any process
    # state, so that weights `convert` does not redraw (attention's in_proj, embeddings) agree between runs too.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name in TOKEN_MODELS:
            if vocab_size is None or seq_len is None:
                raise ConfigError(f"model {name} reads token sequences: build it with vocab_size= and seq_len=")
            return MODELS[name](num_classes=num_classes, vocab_size=vocab_size, seq_len=seq_len, width=width)
        return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)
