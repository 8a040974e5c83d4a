"""Readable names for masked layers, for tables and plots (files keep the exact keys of `masked_layers`).

A layer keeps its qualified module name where the model gives it one (`layer1.0.conv1`, `head`,
`encoder.layers.0.self_attn.in_proj_weight`). A layer that is only an index in a container (nn.Sequential's `0`,
`features.3`) is named by its kind and its order among the container's layers of that kind: `conv` for
convolutions, `fc` for Linear, the lowercase class name otherwise, so Conv-4 reads conv1 ... conv4, fc1 ... fc3
and `features.3` may read `features.conv2`. A parameter other than a layer's `weight` keeps its qualified name
(`encoder.layers.0.self_attn.in_proj_weight`).

Runs record these labels when they are made (the `labels` metadata of masks.safetensors). For a run that did not,
`labels_from_shapes` rebuilds them from the keys and mask shapes alone: a mask of 3 or more dimensions is a conv,
one of 2 an fc, counted among the masked layers only (a layer left dense is not counted, so with
`skip_layers=[first]` Conv-4's masked convs read conv1 ... conv3 there, conv2 ... conv4 in a run that recorded them).
"""

from __future__ import annotations

from collections import Counter

from torch import nn
from torch.nn.utils import parametrize

from supermask.core.convert import masked_layers


def kind(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    cls = type(module)
    if parametrize.is_parametrized(module):  # parametrize swapped in a subclass named Parametrized<class>
        cls = cls.__bases__[0]
    return cls.__name__.lower()


def _unique_or_keys(labels: dict[str, str]) -> dict[str, str]:
    # A label must name one layer; a model mixing indices and names that collide keeps its exact keys.
    return labels if len(set(labels.values())) == len(labels) else {k: k for k in labels}


def layer_labels(model: nn.Module) -> dict[str, str]:
    """{key of `masked_layers(model)`: its readable label}, in model order."""
    names = {id(m): n for n, m in model.named_modules()}
    labels = {}
    for key, module, _ in masked_layers(model):
        name = names[id(module)]
        parent, _, last = name.rpartition(".")
        if key != name or not last.isdigit():  # a named layer, or another parameter than its weight
            labels[key] = key
            continue
        same = [c for _, c in model.get_submodule(parent).named_children() if kind(c) == kind(module)]
        n = next(i for i, c in enumerate(same, 1) if c is module)
        labels[key] = f"{parent + '.' if parent else ''}{kind(module)}{n}"
    return _unique_or_keys(labels)


def labels_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Labels for the keys of a run that did not record them (keys in model order, with their mask shapes)."""
    counts: Counter = Counter()
    labels = {}
    for key, shape in shapes.items():
        parent, _, last = key.rpartition(".")
        if not last.isdigit():
            labels[key] = key
            continue
        k = "conv" if len(shape) >= 3 else "fc"
        counts[parent, k] += 1
        labels[key] = f"{parent + '.' if parent else ''}{k}{counts[parent, k]}"
    return _unique_or_keys(labels)
