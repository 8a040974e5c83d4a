"""supermask: find accurate subnetworks hidden in randomly initialized neural networks."""

from .convert import bake, convert, masked_layers, masks, random_weight, report, score_parameters
from .errors import ConfigError, SupermaskError
from .export import load
from .iterand import rerandomize_
from .mask import num_pruned, topk_mask
from .models import build_model
from .recycle import recycle_
from .together import Together, train_together

__all__ = ["bake", "build_model", "convert", "load", "masked_layers", "masks", "num_pruned", "random_weight",
           "recycle_", "report", "rerandomize_", "score_parameters", "topk_mask",
           "Together", "train_together", "ConfigError", "SupermaskError"]
__version__ = "0.1.0"
