"""The training loop: one for every way of training.

A lone run, the processes of a data-parallel run (`supermask.run.train`) and a stack of runs trained together
(`supermask.multi.together`) are each a `Trainee`: the members it trains (one run, or the runs of a stack), how a
batch becomes their losses, how they are evaluated and how they are checkpointed. `fit` owns everything they
share: the learning-rate schedule, the timing, the progress output, the schedules after each step and at the end
of each epoch (IWR, IteRand, a method's hooks), the finiteness check, the checkpoints inside an epoch, mixed
precision, the trackers and the epoch records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from supermask import data as data_lib
from supermask.errors import SupermaskError
from supermask.run import distributed
from supermask.run.checkpoint import atomic_write_text
from supermask.run.config import Config
from supermask.run.files import METRICS, SCHEDULE
from supermask.run.progress import StepLines, is_live, log_line
from supermask.run.schedule import after_step, end_of_epoch, loss_term, step_fires
from supermask.run.trackers import Trackers


class TrainingError(SupermaskError):
    """Training cannot go on (for example the loss became NaN)."""


def learning_rate(cfg: Config, epoch: int) -> float:
    """The learning rate for `epoch` (0-based), stepped once per epoch as in the papers' code: a linear warm-up to
    cfg.peak_lr, then constant, cosine, or exponential (0.9 every 10 epochs, the signed-supermask paper's decay,
    which it steps per step)."""
    peak = cfg.peak_lr
    if epoch < cfg.warmup_epochs:
        return peak * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "constant":
        return peak
    t = epoch - cfg.warmup_epochs
    if cfg.lr_schedule == "exponential":
        return peak * 0.9 ** (t / 10)
    if cfg.lr_schedule == "multistep":  # the published MultiStepLR([80, 120], 0.1) of 150 epochs, scaled to the run
        return peak * 0.1 ** sum(t >= round(f * (cfg.epochs - cfg.warmup_epochs)) for f in (80 / 150, 120 / 150))
    return 0.5 * peak * (1 + math.cos(math.pi * t / (cfg.epochs - cfg.warmup_epochs)))


def new_state() -> dict[str, Any]:
    """A run's progress before its first epoch (what its checkpoint's metadata holds)."""
    return {"epoch": 0, "step": 0, "history": [], "schedule": [], "seconds": 0.0, "best_test_acc": -1.0, "best_epoch": -1}


def record_epoch(state: dict[str, Any], lr: float, train: tuple[float, float], test: tuple[float, float],
                 seconds: float, speed: dict[str, float] | None = None) -> None:
    """Add one finished epoch (train and test (loss, accuracy), and the training pass's `speed`) to a run's state."""
    epoch = state["epoch"] + 1
    state["history"].append({"epoch": epoch, "lr": lr, "train_loss": train[0], "train_acc": train[1],
                             "test_loss": test[0], "test_acc": test[1], "seconds": round(seconds, 3), **(speed or {})})
    state["epoch"] = epoch
    state["seconds"] += seconds
    if test[1] > state["best_test_acc"]:
        state["best_test_acc"], state["best_epoch"] = test[1], epoch


def write_logs(out_dir: Path, state: dict[str, Any]) -> None:
    """metrics.jsonl (and schedule.jsonl), rewritten whole from the state after its checkpoint: a kill between
    the writes cannot duplicate or lose a line."""
    atomic_write_text(out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in state["history"]))
    if state["schedule"]:
        atomic_write_text(out_dir / SCHEDULE, "".join(json.dumps(r) + "\n" for r in state["schedule"]))


def autocast(amp: bool, device: torch.device):
    """Mixed precision where configured: float16 on GPUs, bfloat16 elsewhere. Masks are computed from the float32
    scores either way, so they do not depend on it."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def grad_scaler(amp: bool, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for float16 (GPUs); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")


class WaitClock:
    """An iterator that times how long its consumer is blocked in next(): the data-loading share of an epoch."""

    def __init__(self, items: Iterable, waited: float = 0.0):
        self.items, self.waited = iter(items), waited

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.waited += time.perf_counter() - start


def speed(images: float, seconds: float, waited: float) -> dict[str, float]:
    """A training pass's images per second and the fraction of its wall time spent waiting for data."""
    seconds = max(seconds, 1e-9)
    return {"images_per_s": round(images / seconds, 1), "data_wait": round(min(waited / seconds, 1.0), 4)}


@dataclasses.dataclass
class Member:
    """One run a trainee trains: its config, its own model, its progress (what its checkpoint's metadata holds)
    and its trackers."""

    cfg: Config
    model: nn.Module
    state: dict[str, Any]
    trackers: Trackers = dataclasses.field(default_factory=Trackers)


class Step(NamedTuple):
    """What one batch gave: `objective`, the tensor backward() differentiates (each member's gradient is that of its
    own loss); `losses` (N,), each member's loss, for the trackers and the finiteness check; `tally` (N, 3) float64,
    each member's loss summed over its samples, its correct predictions and its samples."""

    objective: Tensor
    losses: Tensor
    tally: Tensor


class Trainee:
    """What `fit` trains. A subclass gives the members, the optimizer (one for all members) and the methods below;
    `group` is the process group of a data-parallel run."""

    members: list[Member]
    optimizer: torch.optim.Optimizer
    group: distributed.Group = distributed.Group()
    label: str = ""  # what the progress output calls the members, before the epoch

    def batches(self, epoch: int, start_batch: int, replaced: data_lib.ReplacedCount) -> Iterator:
        """The epoch's training batches from `start_batch` on: (x, y), x for every member or a list of one per
        member, y (B,) or (N, B)."""
        raise NotImplementedError

    def step(self, x, y, epoch: int, index: int) -> Step:
        """The forward pass of batch `index` (0-based in the epoch), under the loop's autocast."""
        raise NotImplementedError

    def trainable(self, i: int) -> list[tuple[str, Tensor]]:
        """Member i's trained tensors, by name: what the finiteness check reads."""
        raise NotImplementedError

    def evaluate(self, replaced: data_lib.ReplacedCount) -> list[tuple[float, float]]:
        """Each member's (mean loss, accuracy) on the test split."""
        raise NotImplementedError

    def save(self, partials: list[dict[str, Any]] | None = None) -> None:
        """Checkpoint every member and write its logs: at an epoch's end, or with `partials` (one per member)
        inside one, where they say how to continue at the next batch."""
        raise NotImplementedError

    def train_mode(self) -> None:
        for m in self.members:
            m.model.train()

    def end_of_pass(self) -> None:
        """After an epoch's training pass, before its schedule and evaluation (a data-parallel run averages its
        processes' BatchNorm statistics here)."""

    def agree(self, where: str, buffers: bool = False) -> None:
        """Check that the processes of a data-parallel run hold the same network."""


def check_finite(t: Trainee, losses: list[float], where: str, lr: float) -> None:
    """Stop with a TrainingError naming the run, the place and the tensor when a member's loss or a trained tensor
    is NaN or inf (one host sync). In a mask search the loss can stay finite while the scores overflow (a NaN
    score is never kept, so the masks silently empty), hence the tensors next to the loss."""
    named = [t.trainable(i) for i in range(len(t.members))]
    flat = [p.detach() for params in named for _, p in params]
    finite = iter(torch.stack([torch.isfinite(p).all() for p in flat]).tolist() if flat else [])
    bad = [next((name for (name, _), ok in zip(params, finite) if not ok), None) for params in named]
    broken = [i for i, (loss, b) in enumerate(zip(losses, bad)) if not math.isfinite(loss) or b is not None]
    device = flat[0].device if flat else torch.device("cpu")
    # Every process must take the same branch, or the others would wait for it forever.
    if not distributed.any_true(bool(broken), t.group, device):
        return
    i = broken[0] if broken else 0
    run = f"run {t.members[i].cfg.out_dir}: " if len(t.members) > 1 else ""
    if not math.isfinite(losses[i]):
        raise TrainingError(f"{run}loss became {losses[i]} in {where} (lr {lr:g}); lower lr= or check the data")
    where_else = " (on this or another process)" if t.group.active else ""
    raise TrainingError(f"{run}training diverged in {where}: {bad[i] or 'a parameter'} became non-finite{where_else} "
                        f"(loss {losses[i]:g}, lr {lr:g}); lower lr= or check the data")


def fit(t: Trainee, ds: data_lib.Dataset, device: torch.device, progress: bool) -> None:
    """Train every member of `t` from where its state stands to the last epoch."""
    cfg, states = t.members[0].cfg, [m.state for m in t.members]
    scaler = grad_scaler(cfg.amp, device)
    if "grad_scaler" in states[0]:
        scaler.load_state_dict(states[0]["grad_scaler"])
    # the bar's length; from shards, an epoch's steps vary a little with its shard order (see data.train_steps)
    steps_per_epoch = data_lib.train_steps(ds, cfg.batch_size, seed=cfg.data_seed, world=t.group.world)
    live = is_live(progress)  # a bar on a terminal, else plain lines: per epoch, and in one (see supermask.run.progress)
    initial = states[0]["epoch"] * steps_per_epoch + states[0].get("partial", {}).get("batch", 0)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.epochs * steps_per_epoch, cfg.max_steps)
    bar = (tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)
           if live else StepLines(total, initial, batch_size=cfg.batch_size, enabled=progress))
    with bar:
        for epoch in range(states[0]["epoch"], cfg.epochs):
            if capped(cfg, states[0]["step"]):  # max_steps reached at an epoch's end: no later epoch runs
                break
            bar.set_description(f"{t.label}epoch {epoch + 1}/{cfg.epochs}")
            lr = learning_rate(cfg, epoch)
            for param_group in t.optimizer.param_groups:
                param_group["lr"] = lr
            start = time.perf_counter() - states[0].get("partial", {}).get("seconds", 0.0)  # trained before a resume
            train, pace = train_pass(t, ds, epoch, device, bar, scaler)
            t.end_of_pass()
            # The epoch's IWR or IteRand step comes before the evaluation, so the test accuracy measures the network
            # saved at the epoch's end: IWR with iwr_rate above the prune rate rewrites kept weights too.
            events = [end_of_epoch(m.model, m.cfg, epoch, m.state["step"]) for m in t.members]
            t.agree(f"epoch {epoch + 1}", buffers=True)
            replaced = data_lib.ReplacedCount()
            results = t.evaluate(replaced)
            if data_lib.is_streamed(ds):
                pace["test_images_replaced"] = replaced.count
            elapsed = time.perf_counter() - start
            for m, fired, trained, tested in zip(t.members, events, train, results):
                m.state["schedule"] += fired
                # a stack's members share its time: each records its share, as if trained alone
                record_epoch(m.state, lr, trained, tested, elapsed / len(t.members), pace)
                m.trackers.epoch(m.state["history"][-1], m.state["step"])
                m.trackers.schedule(fired)
                if scaler.is_enabled():
                    m.state["grad_scaler"] = scaler.state_dict()
            accs = [acc for _, acc in results]
            shown = f"{accs[0]:.3f}" if len(accs) == 1 else f"{min(accs):.3f}-{max(accs):.3f}"
            bar.set_postfix({**({"train_acc": f"{train[0][1]:.3f}"} if len(train) == 1 else {}), "test_acc": shown,
                             "img/s": f"{pace['images_per_s']:.0f}", "data wait": f"{pace['data_wait']:.0%}"},
                            refresh=True)
            if progress and not live:
                log_line(epoch_line(t.label, epoch, cfg.epochs, train, results, lr, elapsed, pace))
            t.save()


def epoch_line(label: str, epoch: int, epochs: int, train: list[tuple[float, float]],
               results: list[tuple[float, float]], lr: float, seconds: float, pace: dict[str, float]) -> str:
    """An epoch's plain progress line: a lone run's losses and accuracies, or every member's test accuracy."""
    if len(results) == 1:
        (train_loss, train_acc), (test_loss, test_acc) = train[0], results[0]
        scores = (f"train loss {train_loss:.4f} acc {train_acc:.4f}, test loss {test_loss:.4f} acc {test_acc:.4f}, "
                  f"lr {lr:.4g}")
    else:
        scores = f"test acc {' '.join(f'{acc:.4f}' for _, acc in results)}"
    return (f"{label}epoch {epoch + 1}/{epochs}: {scores}, {seconds:.1f} s, {pace['images_per_s']:.0f} img/s, "
            f"data wait {pace['data_wait']:.0%}")


def train_pass(t: Trainee, ds: data_lib.Dataset, epoch: int, device: torch.device, bar,
               scaler: torch.amp.GradScaler) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """One pass over the training set: each member's (mean loss, accuracy), and the pass's `speed` (all members'
    images). Counts steps and applies the after-step schedules. Every `checkpoint_every_steps` steps inside the
    epoch, `t.save` gets what continuing at the next batch needs (a member's `state["partial"]` when it resumes
    there). From a streamed set, `speed` also holds `train_images_replaced`, the samples whose unreadable image
    another replaced."""
    cfg, group, members, optimizer = t.members[0].cfg, t.group, t.members, t.optimizer
    steps = data_lib.train_steps(ds, cfg.batch_size, seed=cfg.data_seed, epoch=epoch, world=group.world)
    # Resuming inside the epoch: the saved sums are the global ones (summed over the processes when saved), so
    # rank 0 carries them and the others start from zero.
    partials = [m.state.pop("partial", None) for m in members]
    first = partials[0] or {"batch": 0, "seconds": 0.0, "waited": 0.0}
    sums = torch.tensor([p["sums"] if p and group.main else [0.0] * 3 for p in partials], device=device,
                        dtype=torch.float64)  # per member: loss, correct, seen
    start = time.perf_counter() - first["seconds"]
    replaced = data_lib.ReplacedCount(int(first.get("replaced", 0)) if group.main else 0)  # global, as the sums
    batches = WaitClock(t.batches(epoch, first["batch"], replaced), first["waited"])
    images = len(ds.train_y)
    t.train_mode()
    for index, (x, y) in enumerate(batches, start=first["batch"]):
        with autocast(cfg.amp, device):
            out = t.step(x, y, epoch, index)
        objective = out.objective
        for m in members:  # a method's own loss term, on its float32 scores
            if (term := loss_term(m.model, m.cfg)) is not None:
                objective = objective + term
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        if cfg.weight_decay_mode == "decoupled":
            decay_(optimizer, cfg.weight_decay * lr / cfg.peak_lr)
        for i, m in enumerate(members):
            m.state["step"] += 1
            m.trackers.step_loss(m.state["step"], out.losses[i], lr)
            events = after_step(m.model, m.cfg, epoch, m.state["step"])
            if events:
                m.state["schedule"] += events
                m.trackers.schedule(events)
                t.agree(f"the schedule after step {m.state['step']}")
        sums += out.tally
        bar.update(1)
        if capped(cfg, members[0].state["step"]):  # max_steps: the epoch ends here
            break
        if index % 20 == 0:  # a host sync only every few steps
            losses = out.losses.tolist()
            check_finite(t, losses, f"epoch {epoch + 1} step {index + 1}", lr)
            now = speed(len(members) * min(images, (index + 1) * cfg.batch_size), time.perf_counter() - start,
                        batches.waited)
            bar.set_postfix({"loss": f"{losses[0]:.3f}" if len(losses) == 1 else f"{min(losses):.3f}-{max(losses):.3f}",
                             "img/s": f"{now['images_per_s']:.0f}", "data wait": f"{now['data_wait']:.0%}"},
                            refresh=False)
            for m in members:
                m.trackers.flush()  # the host has synchronized anyway
        if index + 1 < steps and step_fires(members[0].state["step"], cfg.checkpoint_every_steps):
            for m in members:
                m.trackers.flush()
                if scaler.is_enabled():
                    m.state["grad_scaler"] = scaler.state_dict()
            totals = _global_sums(sums, replaced, group)
            seconds = time.perf_counter() - start
            t.save([{"batch": index + 1, "sums": row, "replaced": int(totals[-1]), "seconds": seconds,
                     "waited": batches.waited} for row in _rows(totals)])
    totals = _global_sums(sums, replaced, group)
    rows = _rows(totals)
    check_finite(t, [loss / seen for loss, _, seen in rows], f"epoch {epoch + 1}", optimizer.param_groups[0]["lr"])
    pace = speed(sum(seen for *_, seen in rows), time.perf_counter() - start, batches.waited)
    if data_lib.is_streamed(ds):
        pace["train_images_replaced"] = int(totals[-1])
    return [(loss / seen, correct / seen) for loss, correct, seen in rows], pace


def capped(cfg, step: int) -> bool:
    """Whether training has taken its `max_steps` steps."""
    return cfg.max_steps is not None and step >= cfg.max_steps


@torch.no_grad()
def decay_(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """Decoupled weight decay after the optimizer's step: every trained tensor times 1 - rate (tfa's SGDW, whose
    decay the signed-supermask paper schedules with the learning rate: rate = weight_decay * lr / peak lr)."""
    if rate:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.mul_(1.0 - rate)


def _global_sums(sums: Tensor, replaced: data_lib.ReplacedCount, group: distributed.Group) -> list[float]:
    """The members' sums (N, 3) flattened, and the replaced samples last, summed over the processes."""
    return distributed.all_sum(torch.cat([sums.flatten(), sums.new_tensor([replaced.count])]), group).tolist()


def _rows(totals: list[float]) -> list[list[float]]:
    return [totals[i:i + 3] for i in range(0, len(totals) - 1, 3)]
