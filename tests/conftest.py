"""Shared fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture
def shared_datasets() -> Path:
    """The folder of real datasets ($SUPERMASK_DATA, else <project>/../shared/datasets); skips without CIFAR-10."""
    env = os.environ.get("SUPERMASK_DATA")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not any(path.glob("cifar10*")) and not any(path.glob("cifar-10*")):
        pytest.skip(f"no CIFAR-10 copy in {path}")
    return path
