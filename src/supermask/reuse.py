"""Reusing run directories: a run already there (finished or not) stands for a requested config only when its
resolved config equals the requested one. Sweeps and studies check every run before training anything."""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import RUN_ONLY_KEYS, Config, make_config, recorded_config
from .errors import ConfigError


def _same(key: str, requested, saved) -> bool:
    if requested == saved:
        return True
    if key == "augment":  # resolved from the dataset when a run starts, so an unset one accepts the run's value
        return requested is None
    if key in ("dataset", "data_dir") and requested and saved:  # a run stores relative data paths resolved
        return Path(str(requested)).expanduser().resolve() == Path(str(saved)).expanduser().resolve()
    return False


def differing_keys(requested: Config, run_dir: str | Path) -> list[str]:
    """The config keys whose value in the run directory's config.yaml differs from `requested`, out_dir and the keys
    that change nothing a run computes (RUN_ONLY_KEYS) aside."""
    saved = recorded_config(str(Path(run_dir) / "config.yaml")).to_dict()
    return [k for k, v in requested.to_dict().items()
            if k not in ("out_dir", *RUN_ONLY_KEYS) and not _same(k, v, saved[k])]


def check_reuse(configs: list[Config], *, retrain: bool) -> list[str]:
    """Refuse, in one line naming the keys that differ, when a run directory holds a run of another config; with
    `retrain`, delete those directories instead so that they train again. Returns the deleted directories."""
    stale = []
    for cfg in configs:
        if (Path(cfg.out_dir) / "config.yaml").is_file():
            keys = differing_keys(cfg, cfg.out_dir)
            if keys:
                stale.append((cfg, keys))
    if stale and not retrain:
        cfg, keys = stale[0]
        saved = recorded_config(str(Path(cfg.out_dir) / "config.yaml"))
        diff = ", ".join(f"{k}={getattr(saved, k)!r} there, {k}={getattr(cfg, k)!r} now" for k in keys)
        more = f" (and {len(stale) - 1} more runs)" if len(stale) > 1 else ""
        raise ConfigError(f"{cfg.out_dir}{more} was trained with another config: {diff}; pass --retrain to train "
                          "again over it, or choose another out_dir")
    for cfg, _ in stale:
        shutil.rmtree(cfg.out_dir)
    return [cfg.out_dir for cfg, _ in stale]


def drop_groups(group_dirs: list[Path], deleted: list[str]) -> None:
    """Delete the checkpoints of interrupted groups (`supermask.together`) that hold a run deleted for retraining."""
    from .together import group_runs

    for group_dir in group_dirs:
        runs = group_runs(group_dir) or []
        if any(r in deleted for r in runs):
            shutil.rmtree(group_dir)
