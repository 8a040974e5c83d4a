"""Reusing run directories: a run already there (finished or not) stands for a requested config only when it is
the same run (`supermask.run.rundir`'s rule). Sweeps and studies check every run before training anything."""

from __future__ import annotations

import shutil
from pathlib import Path

from supermask.errors import ConfigError
from supermask.run.config import Config
from supermask.run.rundir import difference, holds_run


def check_reuse(configs: list[Config], *, retrain: bool) -> list[str]:
    """Refuse, in one line naming the keys that differ, when a run directory holds a run of another config; with
    `retrain`, delete those directories instead so that they train again. Returns the deleted directories."""
    stale = []
    for cfg in configs:
        if holds_run(cfg.out_dir):
            diff = difference(cfg, cfg.out_dir)
            if diff:
                stale.append((cfg, diff))
    if stale and not retrain:
        cfg, diff = stale[0]
        more = f" (and {len(stale) - 1} more runs)" if len(stale) > 1 else ""
        raise ConfigError(f"{cfg.out_dir}{more} was trained with another config: {diff}; pass --retrain to train "
                          "again over it, or choose another out_dir")
    for cfg, _ in stale:
        shutil.rmtree(cfg.out_dir)
    return [cfg.out_dir for cfg, _ in stale]


def drop_groups(group_dirs: list[Path], deleted: list[str]) -> None:
    """Delete the checkpoints of interrupted groups (`supermask.multi.together`) that hold a run deleted for retraining."""
    from supermask.multi.together import group_runs

    for group_dir in group_dirs:
        runs = group_runs(group_dir) or []
        if any(r in deleted for r in runs):
            shutil.rmtree(group_dir)
