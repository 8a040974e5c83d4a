"""The papers' recipes as data: each method shorthand's schedule settings per model, and the run lengths they were
tuned for. The IWR paper publishes them per model (CIFAR-10 at 250 epochs; ResNet-50 is its ImageNet model), so
that is how they are keyed; a model it gives no setting for takes the shorthand's "default". Settings a run gives
explicitly win (see `config.make_config`), and short runs scale the epoch periods to their length.
"""

from __future__ import annotations

from typing import Any

DEFAULT = "default"
# The length of the papers' runs, what `epochs: null` asks for: mask searches and dense baselines.
RUN_EPOCHS: dict[str, dict[str, int]] = {
    DEFAULT: {"mask": 250, "dense": 100},   # CIFAR-10 (IWR, Edge-Popup, Biprop papers)
    "resnet50": {"mask": 100, "dense": 100},  # ImageNet
}
PAPER_EPOCHS = RUN_EPOCHS[DEFAULT]["mask"]
IMAGENET_EPOCHS = RUN_EPOCHS["resnet50"]["mask"]

_EP_WIDE = {"method": "edge-popup", "iwr_every": 10, "iwr_rate": 0.2}
SHORTHANDS: dict[str, dict[str, dict[str, Any]]] = {
    "edge-popup+iwr": {
        DEFAULT: {"method": "edge-popup", "iwr_every": 3, "iwr_rate": 0.1},
        "conv6": _EP_WIDE,
        "resnet18": _EP_WIDE,
        # The paper gives no ImageNet EP+IWR period: ResNet-50 takes its wider nets' F 10, r 0.2 (Conv-6,
        # ResNet-18), which are also its ImageNet Biprop+IWR settings.
        "resnet50": {**_EP_WIDE, "epochs": 100},
    },
    "biprop+iwr": {
        DEFAULT: {"method": "biprop", "iwr_every": 10, "iwr_rate": 0.2},
        "resnet18": {"method": "biprop", "iwr_every": 10, "iwr_rate": 0.2, "iwr_warmup": 50, "epochs": 200},
        "resnet50": {"method": "biprop", "iwr_every": 10, "iwr_rate": 0.2, "iwr_warmup": 40, "epochs": 150},
    },
    "iterand": {
        DEFAULT: {"method": "edge-popup", "iterand_every_steps": 300, "iterand_rate": 0.1},
        "resnet50": {"method": "edge-popup", "iterand_every_steps": 1000, "iterand_rate": 0.1},
    },
}


def paper_epochs(model: str, masked: bool = True) -> int:
    """The papers' run length for `model`: what epochs: null means."""
    return RUN_EPOCHS.get(model, RUN_EPOCHS[DEFAULT])["mask" if masked else "dense"]


def paper_schedule(alias: str, model: str) -> dict[str, Any]:
    """The settings the IWR paper used for the method shorthand `alias` on `model` (a copy: the base method, the
    schedule's keys, and `epochs` where the paper trained it for another length than its model's run)."""
    by_model = SHORTHANDS[alias]
    return dict(by_model.get(model, by_model[DEFAULT]))
