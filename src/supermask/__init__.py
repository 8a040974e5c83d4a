"""supermask: find accurate subnetworks hidden in randomly initialized neural networks.

The package's layers, each importing only from those before it (tests/test_layers.py checks it):
    errors -> core (masks, methods, inits, convert, IWR, IteRand) -> models -> data -> run (config, the training
    loop, run directories, checkpoints, trackers) -> export (.smask, ONNX) -> analysis (mask landscape, norms,
    plots) -> multi (runs trained together, studies, sweeps, statistics) -> cli
`import supermask` gives the core API (convert, masks, report, bake, recycle_, rerandomize_, load, build_model,
...), each name imported when first used: the core's without the training loop, the data sources, sweeps or
trackers; `load`, `Together` and `train_together` with what they need.
"""

import importlib

from supermask import _moved
from supermask.errors import ConfigError, SupermaskError

# Every other name is imported when first used (PEP 562), so the command line starts without torch.
_LAZY = {
    **dict.fromkeys(["bake", "convert", "masked_layers", "masks", "random_weight", "report", "score_parameters"],
                    "supermask.core.convert"),
    "rerandomize_": "supermask.core.iterand", "recycle_": "supermask.core.recycle",
    "num_pruned": "supermask.core.mask", "topk_mask": "supermask.core.mask", "build_model": "supermask.models",
    "load": "supermask.export.smask", "Together": "supermask.multi.together",
    "train_together": "supermask.multi.together",
}

__all__ = ["bake", "build_model", "convert", "load", "masked_layers", "masks", "num_pruned", "random_weight",
           "recycle_", "report", "rerandomize_", "score_parameters", "topk_mask",
           "Together", "train_together", "ConfigError", "SupermaskError"]
__version__ = "0.1.0"
_moved.install()


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'supermask' has no attribute {name!r}")
