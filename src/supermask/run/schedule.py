"""When IWR and IteRand steps fire during training, and applying them with a log of what changed: the training
loop calls `after_step` after every optimizer step and `end_of_epoch` at the end of every epoch, which also run
the mask method's own hooks (`methods.Method.after_step`, `.end_of_epoch`).

Epochs are counted from 0 here. An epoch schedule with period F fires at the end of epoch t when
t > 0, t % F == 0, t is not the last epoch, and t > E0 (the warm-up) when one is set. A step schedule with
period K fires after every K-th optimizer step (counted from 1 over the whole run), or, timed "before", after the
steps K - 1, 2K - 1, ...: before every K-th step, as IteRand's published trainer does.
"""

from __future__ import annotations

from torch import nn

from supermask.core.gem_miner import rounds as gem_rounds
from supermask.core.init import derive_seed
from supermask.core.iterand import rerandomize_
from supermask.core.methods import get_method
from supermask.core.recycle import recycle_
from supermask.run.config import Config


def epoch_fires(epoch: int, every: int | None, epochs: int, warmup: int = 0) -> bool:
    if every is None:
        return False
    return epoch > 0 and epoch % every == 0 and epoch != epochs - 1 and (warmup == 0 or epoch > warmup)


def step_fires(step: int, every: int | None, timing: str = "after") -> bool:
    """Whether a step schedule of period `every` fires after optimizer step `step` (counted from 1)."""
    return every is not None and step > 0 and (step + (timing == "before")) % every == 0


def iterand_step(model: nn.Module, cfg: Config, step: int, epoch: int) -> list[dict]:
    """One IteRand step; its draws come from (weight_seed, step), so a resumed run redraws the same values."""
    seed = derive_seed(cfg.weight_seed, f"iterand-step/{step}")
    changed = rerandomize_(model, cfg.iterand_rate, seed, redraw=cfg.iterand_redraw)
    return [{"kind": "iterand", "epoch": epoch + 1, "step": step, "layer": k, "changed": v} for k, v in changed.items()]


def _method_hook(cfg: Config, name: str):
    return getattr(get_method(cfg.method), name) if cfg.masked else None


def after_step(model: nn.Module, cfg: Config, epoch: int, step: int) -> list[dict]:
    """What is due after optimizer step `step` (counted from 1 over the run), applied in place: IteRand's step
    schedule, then the method's own hook; their log records."""
    fires = step_fires(step, cfg.iterand_every_steps, cfg.iterand_timing)
    events = iterand_step(model, cfg, step, epoch) if fires else []
    if (hook := _method_hook(cfg, "after_step")) is not None:
        events += hook(model, cfg, epoch=epoch, step=step)
    return events


def end_of_epoch(model: nn.Module, cfg: Config, epoch: int, step: int) -> list[dict]:
    """The steps due at the end of `epoch` (0-based), applied in place: IWR, IteRand's epoch schedule, then the
    method's own hook; their log records."""
    events: list[dict] = []
    if epoch_fires(epoch, cfg.iwr_every, cfg.epochs, cfg.iwr_warmup):
        changed = recycle_(model, cfg.iwr_rate, ablation=cfg.iwr_ablation)
        events += [{"kind": "iwr", "epoch": epoch + 1, "step": step, "layer": k, "changed": v} for k, v in changed.items()]
    if epoch_fires(epoch, cfg.iterand_every_epochs, cfg.epochs):
        events += iterand_step(model, cfg, step, epoch)
    if (hook := _method_hook(cfg, "end_of_epoch")) is not None:
        events += hook(model, cfg, epoch=epoch, step=step)
    return events


def loss_term(model: nn.Module, cfg: Config):
    """What the method adds to the training loss (Gem-Miner's regularizer), or None."""
    term = get_method(cfg.method).loss_term if cfg.masked else None
    return None if term is None else term(model, cfg)


def planned_steps(cfg: Config, steps_per_epoch: int) -> dict[str, int]:
    """How many IWR and IteRand steps a whole run of `cfg` fires (0 for a schedule that is off)."""
    epochs = range(cfg.epochs)
    iterand = sum(epoch_fires(t, cfg.iterand_every_epochs, cfg.epochs) for t in epochs)
    if cfg.iterand_every_steps is not None:
        total, every = cfg.epochs * steps_per_epoch, cfg.iterand_every_steps
        # "before": the steps s <= total with s + 1 a multiple of K, that is the multiples of K in [2, total + 1]
        iterand = total // every if cfg.iterand_timing == "after" else (total + 1) // every - (every == 1)
    return {"iwr": sum(epoch_fires(t, cfg.iwr_every, cfg.epochs, cfg.iwr_warmup) for t in epochs), "iterand": iterand}


def never_fires(cfg: Config, steps_per_epoch: int) -> str | None:
    """A warning when a configured schedule fires no step in this run (a period longer than the run), else None."""
    planned = planned_steps(cfg, steps_per_epoch)
    if cfg.iwr_every is not None and planned["iwr"] == 0:
        return (f"iwr_every={cfg.iwr_every} (warm-up {cfg.iwr_warmup}) fires no IWR step in {cfg.epochs} epochs: "
                "steps come at the end of an epoch t > 0 with t % iwr_every == 0, never the last one")
    if cfg.method == "gem-miner" and cfg.prune_rate > 0 and gem_rounds(cfg.epochs, cfg.gem_period) == 0:
        return (f"gem_period={cfg.gem_period} fires no Gem-Miner pruning round in {cfg.epochs} epochs: rounds come "
                "after the 0-based epochs T, 2T, ... (T = gem_period), so the mask is only 1[scores > 0.5]")
    every = cfg.iterand_every_steps or cfg.iterand_every_epochs
    if every is not None and planned["iterand"] == 0:
        unit = "steps" if cfg.iterand_every_steps is not None else "epochs"
        return (f"iterand_every_{unit}={every} fires no IteRand step in {cfg.epochs} epochs of "
                f"{steps_per_epoch} steps")
    return None


def fired_steps(events: list[dict]) -> dict[str, int]:
    """How many IWR and IteRand steps a run's schedule log holds (its records are one per layer and step)."""
    fired = {(e["kind"], e["epoch"], e["step"]) for e in events}
    return {kind: sum(k == kind for k, _, _ in fired) for kind in ("iwr", "iterand")}
