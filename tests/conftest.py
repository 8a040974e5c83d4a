"""Shared fixtures, and one torch thread per test process.

Many tests start training processes of their own (torchrun, sweeps' workers, killed-and-resumed runs). With torch's
default of a thread per core each, they would run more threads than this 2-core machine has and slow down 10x;
tests of thread counts set theirs explicitly.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; child processes inherit it
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture
def shared_datasets() -> Path:
    """The folder of real datasets ($SUPERMASK_DATA, else <project>/../shared/datasets); skips without CIFAR-10."""
    env = os.environ.get("SUPERMASK_DATA")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not any(path.glob("cifar10*")) and not any(path.glob("cifar-10*")):
        pytest.skip(f"no CIFAR-10 copy in {path}")
    return path


@pytest.fixture(scope="session")
def imagenet_like(tmp_path_factory):
    """A tiny ImageNet-shaped set built from the CIFAR-10 copy (8 training and 4 validation images per class, 20
    samples per shard: 4 training and 2 validation shards); skips without CIFAR-10."""
    from supermask.data.imagenet_like import build_imagenet_like

    env = os.environ.get("SUPERMASK_DATA")
    data = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not any(data.glob("cifar10*")) and not any(data.glob("cifar-10*")):
        pytest.skip(f"no CIFAR-10 copy in {data}")
    return build_imagenet_like(tmp_path_factory.mktemp("inet") / "set", per_class=8, val_per_class=4, shard_size=20,
                               data_dir=data)
