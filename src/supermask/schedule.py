"""When IWR and IteRand steps fire during training, and applying them with a log of what changed.

Epochs are counted from 0 here. An epoch schedule with period F fires at the end of epoch t when
t > 0, t % F == 0, t is not the last epoch, and t > E0 (the warm-up) when one is set. A step schedule with
period K fires after every K-th optimizer step (counted from 1 over the whole run).
"""

from __future__ import annotations

from torch import nn

from .config import Config
from .init import derive_seed
from .iterand import rerandomize_
from .recycle import recycle_


def epoch_fires(epoch: int, every: int | None, epochs: int, warmup: int = 0) -> bool:
    if every is None:
        return False
    return epoch > 0 and epoch % every == 0 and epoch != epochs - 1 and (warmup == 0 or epoch > warmup)


def step_fires(step: int, every: int | None) -> bool:
    return every is not None and step > 0 and step % every == 0


def iterand_step(model: nn.Module, cfg: Config, step: int, epoch: int) -> list[dict]:
    """One IteRand step; its draws come from (weight_seed, step), so a resumed run redraws the same values."""
    seed = derive_seed(cfg.weight_seed, f"iterand-step/{step}")
    changed = rerandomize_(model, cfg.iterand_rate, seed)
    return [{"kind": "iterand", "epoch": epoch + 1, "step": step, "layer": k, "changed": v} for k, v in changed.items()]


def end_of_epoch(model: nn.Module, cfg: Config, epoch: int, step: int) -> list[dict]:
    """The epoch-scheduled steps due at the end of `epoch` (0-based), applied in place; their log records."""
    events: list[dict] = []
    if epoch_fires(epoch, cfg.iwr_every, cfg.epochs, cfg.iwr_warmup):
        changed = recycle_(model, cfg.iwr_rate, ablation=cfg.iwr_ablation)
        events += [{"kind": "iwr", "epoch": epoch + 1, "step": step, "layer": k, "changed": v} for k, v in changed.items()]
    if epoch_fires(epoch, cfg.iterand_every_epochs, cfg.epochs):
        events += iterand_step(model, cfg, step, epoch)
    return events
