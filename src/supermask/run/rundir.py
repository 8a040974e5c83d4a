"""A run directory, and the one rule for "the same run".

A run directory holds the run's resolved `config.yaml`, written when it starts. Whether the directory stands for
a requested config is decided here, once, for every caller: `train --resume`, sweeps and studies reusing finished
runs, and groups trained together resuming their runs. Two configs make the same run when they differ only in
keys that change no result (`RESULT_FREE_KEYS`); any other difference is refused in one line naming every
differing key.
"""

from __future__ import annotations

from pathlib import Path

from supermask.errors import ConfigError
from supermask.run.config import Config, recorded_config
from supermask.run.files import CONFIG_FILE, TASKS_FILE

# Keys that say where a run is or how it executes, never what it computes: where its files go, the trackers it
# reports to, how many processes decode its batches, how often it checkpoints inside an epoch.
RESULT_FREE_KEYS = ("out_dir", "logger", "num_workers", "checkpoint_every_steps")


def holds_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file()


def recorded(run_dir: str | Path) -> Config:
    """The config a run directory recorded (keys added since take the value its supermask used)."""
    return recorded_config(str(Path(run_dir) / CONFIG_FILE))


def _same(key: str, requested, saved) -> bool:
    if requested == saved:
        return True
    if key == "augment":  # resolved from the dataset when a run starts, so an unset one accepts the run's value
        return requested is None
    if key in ("dataset", "data_dir") and requested and saved:  # a run stores relative data paths resolved
        return Path(str(requested)).expanduser().resolve() == Path(str(saved)).expanduser().resolve()
    return False


def _differing(requested: Config, saved: Config) -> list[str]:
    then = saved.to_dict()
    return [k for k, v in requested.to_dict().items() if k not in RESULT_FREE_KEYS and not _same(k, v, then[k])]


def differing_keys(requested: Config, run_dir: str | Path) -> list[str]:
    """The keys, in config order, whose requested value would make another run than the one in `run_dir`."""
    return _differing(requested, recorded(run_dir))


def difference(requested: Config, run_dir: str | Path) -> str | None:
    """'k=<run's value> there, k=<requested value> now' for every differing key (config.yaml read once), or None
    when `run_dir` holds the same run."""
    saved = recorded(run_dir)
    keys = _differing(requested, saved)
    return ", ".join(f"{k}={getattr(saved, k)!r} there, {k}={getattr(requested, k)!r} now" for k in keys) or None


def check_same_run(requested: Config, run_dir: str | Path, doing: str = "resume") -> None:
    """Refuse, naming every differing key at once, when `run_dir` holds a run of another config."""
    diff = difference(requested, run_dir)
    if diff:
        raise ConfigError(f"cannot {doing} {run_dir}: it was trained with another config: {diff}")


def task_dir(out_dir: str | Path, task: int) -> Path:
    """Where a run of many tasks keeps task `task`'s run."""
    return Path(out_dir) / f"task-{task:03d}"


def task_runs(out_dir: str | Path) -> list[Path]:
    """The finished task runs of a run of many tasks, in task order (its tasks.json's list)."""
    from supermask.run.checkpoint import read_json

    out_dir = Path(out_dir)
    if not (out_dir / TASKS_FILE).is_file():
        raise ConfigError(f"{out_dir} is not a run of many tasks (no {TASKS_FILE})")
    return [out_dir / t["run"] for t in read_json(out_dir / TASKS_FILE)["per_task"]]
