"""ImageNet (ILSVRC-2012) by name: `dataset=imagenet` is the folder DATA/imagenet, streamed.

ImageNet cannot be downloaded for the user: its license is agreed to at image-net.org, which then gives the files.
The folder is laid out as `stream` reads it: train/<wnid>/*.JPEG, and val/ either in the same class folders or flat
with a labels file (Kaggle's LOC_val_solution.csv, or `file label` lines).
"""

from __future__ import annotations

from pathlib import Path

from supermask.errors import ConfigError

LAYOUT = ("train/<wnid>/*.JPEG and val/ in the same class folders, or val/*.JPEG flat with LOC_val_solution.csv "
          "(Kaggle's) or val.txt (`file label` lines) beside it")


def find_imagenet(root: Path | None) -> Path:
    """DATA/imagenet, the folder `dataset=imagenet` reads; a one-line error saying where it looked when absent."""
    if root is None:
        raise ConfigError("dataset=imagenet: no data directory (no home directory and no $SUPERMASK_DATA); set "
                          "SUPERMASK_DATA or data_dir=DIR to the folder holding imagenet/")
    path = root / "imagenet"
    if (path / "train").is_dir():
        return path.resolve()
    raise ConfigError(f"dataset=imagenet: no ImageNet at {path} (no train/ there; it is looked for in data_dir=DIR, "
                      "else $SUPERMASK_DATA). ImageNet cannot be downloaded automatically (license: image-net.org): "
                      f"lay it out there as {LAYOUT}, or give dataset=PATH")
