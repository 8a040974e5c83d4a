"""What every benchmark records about the machine it ran on, and paths as committed results may hold them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def portable_path(path: str | Path) -> str:
    """`path` without the machine it ran on: a relative path as given, an absolute one relative to the current
    directory or the repository where it lies inside one, else only its last component."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    for root in (Path.cwd(), REPO):
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return p.name
