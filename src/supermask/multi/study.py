"""Multi-seed studies: many runs over the same random weights (or several), then their mask landscape."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from supermask.errors import ConfigError
from supermask.multi.reuse import check_reuse, drop_groups
from supermask.run.config import INT64_MAX, Config, make_config
from supermask.run.files import CHECKPOINT, SUMMARY


def study_configs(base: Config, score_seeds: int, weight_seeds: int = 1) -> list[Config]:
    """One config per (weight seed, score seed): seeds count up from the base config's own, score seeds on across
    weight seeds (w0: s0..s(N-1), w1: sN..s(2N-1), ...), so no two runs start from the same scores."""
    if score_seeds < 1 or weight_seeds < 1:
        raise ConfigError(f"a study needs at least one seed of each kind, got --score-seeds {score_seeds}, --weight-seeds {weight_seeds}")
    if score_seeds * weight_seeds < 2:
        raise ConfigError(f"a study compares at least two runs; --score-seeds {score_seeds} with --weight-seeds "
                          f"{weight_seeds} gives one: use --score-seeds 2 or more")
    if not base.masked:
        raise ConfigError(f"a mask study needs a mask method (edge-popup or biprop), not method={base.method}")
    top_weight, top_score = base.weight_seed + weight_seeds - 1, base.score_seed + weight_seeds * score_seeds - 1
    if max(top_weight, top_score) > INT64_MAX:
        raise ConfigError(f"the study's seeds run up to weight_seed={top_weight}, score_seed={top_score}: seeds must be "
                          f"integers in [0, {INT64_MAX}]")
    root = Path(base.out_dir)
    out = []
    for w in range(weight_seeds):
        for s in range(score_seeds):
            ws, ss = base.weight_seed + w, base.score_seed + w * score_seeds + s
            out.append(dataclasses.replace(base, weight_seed=ws, score_seed=ss,
                                           out_dir=str(root / "runs" / f"{base.label}-w{ws}-s{ss}")))
    return out


def run_study(source: str | None, overrides: dict[str, Any], *, score_seeds: int, weight_seeds: int = 1,
              progress: bool = True, log=print, together: bool = False, forward: str = "auto",
              retrain: bool = False) -> dict:
    """Train (or reuse) every run of the study, then compare their masks into <out_dir>/compare. A run is reused
    only when trained with the same config; otherwise the study is refused, or with `retrain` trains it again.
    With `together`, the runs still to train are trained at once in this process (see `supermask.multi.together`).
    `log` gets a line per run saying what happened to it: trained, resumed from its checkpoint, or reused."""
    from supermask.analysis import landscape
    from supermask.run import train
    from supermask.run.checkpoint import read_json

    overrides = dict(overrides)
    if not overrides.get("out_dir"):
        raise ConfigError("a study needs out_dir=DIR (its runs go to DIR/runs, the comparison to DIR/compare)")
    base = make_config(source, overrides)
    configs = study_configs(base, score_seeds, weight_seeds)
    deleted = check_reuse(configs, retrain=retrain)
    if deleted:
        drop_groups([Path(base.out_dir) / "together"], deleted)
    # Decided before anything trains: afterwards every run has a summary, and all would read as reused.
    happened = {c.out_dir: _before(c, CHECKPOINT) for c in configs}
    if together:
        happened.update(_train_together(configs, Path(base.out_dir) / "together", forward, progress, log))
    for i, cfg in enumerate(configs, 1):
        if (Path(cfg.out_dir) / SUMMARY).is_file():
            summary = read_json(Path(cfg.out_dir) / SUMMARY)
        else:
            summary = train.run(cfg, resume=True, progress=progress)
        log(f"[{i}/{len(configs)}] {cfg.out_dir}: {happened[cfg.out_dir]}, "
            f"test accuracy {100 * summary['test_acc']:.2f}%")
    return landscape.write_comparison([c.out_dir for c in configs], Path(base.out_dir) / "compare")


def _before(cfg: Config, checkpoint: str) -> str:
    """What the study will do with a run, from what its directory holds now."""
    out = Path(cfg.out_dir)
    if (out / SUMMARY).is_file():
        return "reused (finished before)"
    return "resumed from its checkpoint" if (out / checkpoint).is_file() else "trained"


def _train_together(configs: list[Config], group_dir: Path, forward: str, progress: bool, log) -> dict[str, str]:
    """Train the runs still to train as one group; what happened to each, by its out_dir."""
    from supermask.multi.together import group_runs, train_together

    # An interrupted group resumes with exactly its own runs, even if others finished since.
    started = group_runs(group_dir)
    if started is not None:
        by_dir = {c.out_dir: c for c in configs}
        missing = [d for d in started if d not in by_dir]
        if missing:
            raise ConfigError(f"{group_dir} holds an unfinished group with runs outside this study ({missing[0]}); "
                              "delete it to start over")
        pending = [by_dir[d] for d in started]
    else:
        pending = [c for c in configs if not (Path(c.out_dir) / SUMMARY).is_file()]
    if not pending:
        return {}
    summaries = train_together(pending, group_dir, forward=forward, progress=progress)
    accs = " ".join(f"{100 * s['test_acc']:.2f}" for s in summaries)
    log(f"trained {len(pending)} runs together: test accuracies {accs}%")
    if started is not None:
        what = "resumed together from the group's checkpoint"
    else:
        what = f"trained together ({len(pending)} runs)"
    return {c.out_dir: what for c in pending}
