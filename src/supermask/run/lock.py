"""One writer per run directory.

A process that trains into a run directory holds an exclusive lock (`flock`) on the directory's `.lock` file for
the run's life, `together` groups on every run's directory and the group's. The kernel drops the lock when the
process ends however it ends (even `kill -9`), so a stale lock cannot block a later `--resume`. The file stays;
it holds the pid of the last writer and does not count as content of the directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from supermask.errors import ConfigError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir`'s lock (creating the directory) for the block; a ConfigError naming the holder's pid when
    another process (or another open of this process) holds it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise ConfigError(f"out_dir {run_dir} exists and is not a directory; choose another out_dir") from None
    except OSError as e:
        raise ConfigError(f"cannot create out_dir {run_dir} ({e.strerror or e})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise ConfigError(f"{run_dir} is in use by another process{f' (pid {holder})' if holder.isdigit() else ''};"
                                  " wait for it to end, or stop it, or choose another out_dir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_dir_is_empty(run_dir: Path) -> bool:
    """Whether a directory holds nothing but (at most) its lock file."""
    return all(p.name == LOCK_FILE for p in run_dir.iterdir())
