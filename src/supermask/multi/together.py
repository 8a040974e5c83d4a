"""Many mask searches at once: runs of one config that differ only in their seeds, trained in one process.

Each masked layer's scores and random weights of all N runs live in one stacked tensor (N, *shape), and every
run's own model holds views into it. So one selection per layer gives all N masks, one optimizer step updates
all runs, runs that share a data seed share each batch (drawn and augmented once), and each run's model can still
be evaluated, checkpointed, recycled (IWR), redrawn (IteRand) and exported like a run trained alone.

The forward pass over the N runs is one of
- "vmap": `torch.func.vmap` over the architecture with the stacked effective weights, one batched call per
  layer (grouped convolutions); for GPUs, where one small network leaves most of the device idle;
- "loop": each run's forward in turn with its slice of the stacked weights; on a CPU separate convolutions are
  faster than one grouped convolution (benchmarks/speed.py measures both).

Each run's gradient is that of its own loss, the optimizer's arithmetic is elementwise, and each run's view into
a stack keeps the memory format of its own tensor, so with "loop" the runs match runs trained alone bit for bit on
a CPU (the same masks, logits and scores); "vmap" matches them within float tolerance.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize

from supermask import data as data_lib
from supermask.core.convert import masked_layers, random_weight
from supermask.core.mask import scored_mask
from supermask.core.methods import get_method
from supermask.errors import ConfigError
from supermask.multi import FORWARDS
from supermask.models import build_model
from supermask.run import distributed
from supermask.run.checkpoint import (atomic_write_text, load_optimizer_tensors, load_tensors, optimizer_tensors,
                                      remove_orphan_temps, save_checkpoint, save_tensors, write_json)
from supermask.run.config import Config, dump_yaml, make_config
from supermask.run.files import CHECKPOINT, CONFIG_FILE
from supermask.run.lock import LOCK_FILE, run_lock
from supermask.run.loop import Member, Step, Trainee, autocast, fit, new_state, write_logs
from supermask.run.rundir import check_same_run
from supermask.run.trackers import check_available, open_trackers
from supermask.run.train import (_finish, build, check_model_fits_data, check_model_size, input_layout, kept_fractions,
                                 load_data, network_inputs, optimizer_for, pick_device, place, resolve_data_paths,
                                 set_threads)

GROUP_CHECKPOINT = "together.safetensors"
SEED_KEYS = ("weight_seed", "score_seed", "data_seed", "out_dir")  # what may differ between the runs of a group


class Together:
    """N converted models of one architecture whose masked layers share stacked storage, and the forward pass
    over all of them. `template` is an unconverted model of the same architecture, used as the function."""

    def __init__(self, models: list[nn.Module], template: nn.Module, method: str, forward: str = "loop"):
        if forward not in ("loop", "vmap"):
            raise ConfigError(f"unknown forward {forward!r}: expected loop or vmap")
        if forward == "vmap" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in template.modules()):
            raise ConfigError("forward=vmap cannot update BatchNorm running statistics of stacked runs; use forward=loop")
        self.models, self.template, self.forward_kind = models, template, forward
        first = list(masked_layers(models[0]))
        # The method's own combine (and its options, e.g. Biprop's gradient), as each run computes it alone.
        self.combine = first[0][2].combine
        self.names = [name for name, _, _ in first]
        self.prune_rates = [p.prune_rate for _, _, p in first]
        self.counts = [p.count for _, _, p in first]
        # The masked tensors' qualified parameter names (a layer's weight, attention's in_proj_weight, ...)
        # in the template, as functional_call takes them.
        module_names = {id(m): n for n, m in models[0].named_modules()}
        self.params = [f"{module_names[id(layer)]}.{p.param_name}".lstrip(".") for _, layer, p in first]
        per_model = [{name: (layer, p) for name, layer, p in masked_layers(m)} for m in models]
        self.scores: list[nn.Parameter] = []
        self.weights: list[Tensor] = []
        for name in self.names:
            pairs = [layers[name] for layers in per_model]
            scores = nn.Parameter(stack_like([p.scores.detach() for _, p in pairs]))
            weights = stack_like([random_weight(layer, p).detach() for layer, p in pairs])
            for i, (layer, p) in enumerate(pairs):
                # Views share storage and version counter with the stack: every update of the stack is seen by
                # the run's own model (its mask cache included), and every IWR/IteRand edit of it by the stack.
                p.scores = nn.Parameter(scores.detach()[i], requires_grad=False)
                _set_original(self.models[i], random_weight(layer, p), nn.Parameter(weights[i], requires_grad=False))
            self.scores.append(scores)
            self.weights.append(weights)
        own = [n for n, _ in template.named_parameters()] + [n for n, _ in template.named_buffers()]
        # Everything else the function needs (biases, skipped layers, BatchNorm buffers) is each run's own tensor.
        self.others = [{n: _get(m, n) for n in own if n not in self.params} for m in models]

    def __len__(self) -> int:
        return len(self.models)

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)
        for m in self.models:
            m.train(mode)

    def effective_weights(self) -> list[Tensor] | list[list[Tensor]]:
        """Each masked layer's effective weights of all runs, differentiable in the scores when autograd is on
        (straight-through masks): a stack (N, *shape) for vmap; for loop, each run's own, computed by the very
        call its model makes alone, so reductions (Biprop's alpha) run in the same order and agree bit for bit."""
        out = []
        for scores, weights, rate, count in zip(self.scores, self.weights, self.prune_rates, self.counts):
            mask = scored_mask(scores, rate, members=True, count=count)  # as each run's layer computes its own
            if self.forward_kind == "vmap":
                out.append(self.combine(weights, mask, members=True))
            else:
                out.append([self.combine(w, m) for w, m in zip(weights, mask)])
        return out

    def __call__(self, x: Tensor | list[Tensor], weights: list | None = None) -> Tensor:
        """Logits (N, B, classes) of every run: `x` is one batch for all runs or a list of one per run."""
        weights = self.effective_weights() if weights is None else weights
        if self.forward_kind == "loop":
            logits = []
            for i, others in enumerate(self.others):
                params = {**others, **{n: w[i] for n, w in zip(self.params, weights)}}
                logits.append(functional_call(self.template, params, (x[i] if isinstance(x, list) else x,)))
            return torch.stack(logits)
        params = dict(zip(self.params, weights))
        params.update({k: torch.stack([o[k] for o in self.others]) for k in self.others[0]})
        shared = not isinstance(x, list)
        inputs = x if shared else torch.stack(x)
        return vmap(lambda p, xb: functional_call(self.template, p, (xb,)), in_dims=(0, None if shared else 0))(params, inputs)


def stack_like(tensors: list[Tensor]) -> Tensor:
    """The tensors stacked into (N, *shape) whose slices have the strides of the first: a run's view into the stack
    keeps its own memory format. Convolution picks its algorithm, and so its float rounding, from the weight's
    layout when the input's is ambiguous (one input channel, as on digits), so a contiguous stack of channels-last
    weights would compute differently from the runs alone."""
    first = tensors[0]
    if not (first.is_contiguous() or first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)):
        first = first.contiguous()
    out = torch.empty_strided((len(tensors), *first.shape), (first.numel(), *first.stride()),
                              dtype=first.dtype, device=first.device)
    for row, t in zip(out, tensors):
        row.copy_(t)
    return out


def _set_original(model: nn.Module, old: Tensor, new: nn.Parameter) -> None:
    """Put `new` under a masked tensor in place of `old`, at every owner of it (a tied lm_head and embedding)."""
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                if plist.original is old:
                    plist.original = new


def _get(model: nn.Module, name: str) -> Tensor:
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module) if module else model, attr)


def check_group(cfgs: list[Config]) -> None:
    """Runs train together only when they differ in nothing but their seeds and run directories."""
    if not cfgs:
        raise ConfigError("training together needs at least one run")
    first = cfgs[0]
    if not first.masked:
        raise ConfigError(f"training together needs a mask method (edge-popup or biprop), not method={first.method}")
    if not get_method(first.method).stacks:
        raise ConfigError(f"training together selects each layer's top-k masks for all its runs at once, and "
                          f"method={first.method} does not mask by a top-k: train these runs alone")
    if first.score_rank == "signed":
        raise ConfigError("training together ranks each layer's |scores| for all its runs at once; score_rank=signed "
                          "ranks the signed scores: train these runs alone")
    if first.prune_scope == "global":
        raise ConfigError("training together selects each layer's masks for all its runs at once, layer by layer; "
                          "prune_scope=global needs every layer's scores of a run at once: train these runs alone")
    base = {k: v for k, v in first.to_dict().items() if k not in SEED_KEYS}
    for cfg in cfgs[1:]:
        for k, v in cfg.to_dict().items():
            if k not in SEED_KEYS and base[k] != v:
                raise ConfigError(f"runs trained together may differ only in {', '.join(SEED_KEYS)}; "
                                  f"{k} is {base[k]!r} in one and {v!r} in another")
    if first.data_mode == "stream" or first.dataset.strip().lower() == "imagenet":  # a folder streamed under auto is
        # refused when its data is loaded
        raise ConfigError(f"training together reads data held in memory, and {first.dataset} is streamed: train these"
                          " runs one by one (without --together)")
    dirs = [c.out_dir for c in cfgs]
    if None in dirs or len(set(dirs)) != len(dirs):
        raise ConfigError("every run trained together needs its own out_dir")
    if distributed.launched():
        raise ConfigError("training together runs in one process; start it without torchrun")


def pick_forward(forward: str, device: torch.device, template: nn.Module) -> str:
    if forward not in FORWARDS:
        raise ConfigError(f"unknown forward {forward!r}: expected one of {', '.join(FORWARDS)}")
    if forward != "auto":
        return forward
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in template.modules())
    return "vmap" if device.type == "cuda" and not has_bn else "loop"


def group_batches(ds, cfgs: list[Config], epoch: int, device, start_batch: int = 0):
    """Each step's batches (from `start_batch` on): one (x, y) shared by all runs when they share a data seed, else
    a list per run."""
    seeds = sorted({c.data_seed for c in cfgs})
    streams = [data_lib.train_batches(ds, cfgs[0].batch_size, seed=s, epoch=epoch, augment=cfgs[0].augment,
                                      device=device, start_batch=start_batch, crop=cfgs[0].augment_crop) for s in seeds]
    where = [seeds.index(c.data_seed) for c in cfgs]
    for drawn in zip(*streams):
        if len(seeds) == 1:
            yield drawn[0]
        else:
            yield [drawn[j][0] for j in where], torch.stack([drawn[j][1] for j in where])


def to_layout(x: Tensor | list[Tensor], channels_last: bool) -> Tensor | list[Tensor]:
    """Image batches (one, or a list of one per run) in the layout the runs compute in."""
    return [input_layout(xi, channels_last) for xi in x] if isinstance(x, list) else input_layout(x, channels_last)


def per_run_losses(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of each run, (N,), for logits (N, B, C) and labels (B,) shared or (N, B) per run."""
    n, b, _ = logits.shape
    y = y.expand(n, b) if y.dim() == 1 else y
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=label_smoothing)
    return losses.view(n, b).mean(1)


@torch.no_grad()
def evaluate_together(group: Together, ds, batch_size: int, device, channels_last: bool,
                      amp: bool = False) -> list[tuple[float, float]]:
    """(mean loss, accuracy) of every run on the test split; effective weights computed once."""
    group.train(False)
    weights = group.effective_weights()
    sums = torch.zeros(len(group), 2, dtype=torch.float64, device=device)
    for x, y in data_lib.eval_batches(ds, batch_size, device=device):
        with autocast(amp, device):
            logits = group(to_layout(x, channels_last), weights).float()
        sums[:, 0] += nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(group)), reduction="none").view(len(group), -1).sum(1)
        sums[:, 1] += (logits.argmax(-1) == y).sum(1)
    group.train(True)
    n = len(ds.test_y)
    return [(loss / n, correct / n) for loss, correct in sums.tolist()]


def _member_optimizer(cfg: Config, model: nn.Module, optimizer, group: Together, i: int):
    """An optimizer over one run's own score views holding its slice of the group's optimizer state, so the run's
    checkpoint resumes and reads like one trained alone."""
    params = [p.scores for _, _, p in masked_layers(model)]
    own = optimizer_for(cfg, params)
    for p, stacked in zip(params, group.scores):
        if stacked in optimizer.state:
            own.state[p] = {k: (v[i] if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in optimizer.state[stacked].items()}
    return own


def train_together(cfgs: list[Config], group_dir: str | Path, *, forward: str = "auto",
                   progress: bool = True) -> list[dict[str, Any]]:
    """Train the runs of `cfgs` in one process (resuming from `group_dir` when it holds their checkpoint), write
    each run's directory as `supermask train` would, and return their summaries."""
    check_group(cfgs)
    first = cfgs[0]
    check_available(first.logger)
    set_threads(first.threads)  # as `train` does: the same thread count, the same masks
    device = pick_device(first.device)
    if first.amp and device.type == "cuda":
        raise ConfigError("amp=true on a GPU scales float16 losses with one scaler, and a group has one optimizer "
                          "step for all its runs: one run's overflow would skip every run's step, so they would not "
                          "train as alone; train with amp=false, or the runs alone")
    ds = load_data(first)
    if data_lib.is_streamed(ds):  # the runs share batches drawn from tensors held in memory
        raise ConfigError(f"training together reads data held in memory, and {ds.name} is streamed: train these runs "
                          "one by one (without --together)")
    for cfg in cfgs:
        resolve_data_paths(cfg, ds)  # as `train` does: config.yaml re-runs and evaluates from any directory
        if cfg.augment is None:
            cfg.augment = ds.augment
    check_model_fits_data(first.model, ds)
    check_model_size(first, ds, device, runs=len(cfgs))
    models = [place(build(cfg, ds), cfg, device) for cfg in cfgs]
    template = place(build_model(first.model, width=first.width, **network_inputs(first, ds)), first, device)
    template.requires_grad_(False)
    ds = data_lib.on_device(ds, device)
    group = Together(models, template, first.method, pick_forward(forward, device, template))
    optimizer = optimizer_for(first, group.scores)

    group_dir = Path(group_dir)
    ckpt = group_dir / GROUP_CHECKPOINT
    dirs = [c.out_dir for c in cfgs]
    with contextlib.ExitStack() as held:
        if ckpt.exists():
            _lock_all(held, [group_dir, *dirs])
            states = _load_group(ckpt, group, optimizer, dirs)
            for cfg in cfgs:
                check_same_run(cfg, cfg.out_dir)
        else:
            for cfg in cfgs:
                out = Path(cfg.out_dir)
                if out.exists() and not out.is_dir():
                    raise ConfigError(f"out_dir {out} exists and is not a directory; choose another out_dir")
                found = {p.name for p in out.iterdir()} - {LOCK_FILE} if out.exists() else set()
                if found == {CONFIG_FILE}:  # a group killed before its first checkpoint: start it again
                    check_same_run(cfg, out)
                elif found:
                    raise ConfigError(f"out_dir {out} already holds a run; finish it alone (supermask train --resume) "
                                      "or choose another out_dir")
            _lock_all(held, [group_dir, *dirs])  # creates the directories
            states = [new_state() for _ in cfgs]
            try:
                for cfg in cfgs:
                    atomic_write_text(Path(cfg.out_dir) / CONFIG_FILE, dump_yaml(cfg))
            except OSError as e:
                raise ConfigError(f"cannot create the run directories ({e.strerror or e})") from None

        trackers = [held.enter_context(contextlib.closing(open_trackers(cfg.logger, Path(cfg.out_dir),
                                                                         Path(cfg.out_dir).name, state["step"])))
                    for cfg, state in zip(cfgs, states)]
        for cfg, model, state, t in zip(cfgs, models, states, trackers):
            if not state["history"]:
                t.hparams(cfg.to_dict(), {"epoch/test_acc": 0.0, "epoch/train_acc": 0.0, "epoch/test_loss": 0.0})
                t.scalars(kept_fractions(model), 0)
        fit(Stack(cfgs, group, optimizer, ds, device, group_dir, states, trackers), ds, device, progress)
        summaries = []
        for i, (cfg, model, state) in enumerate(zip(cfgs, models, states)):
            out = Path(cfg.out_dir)
            save_checkpoint(out / CHECKPOINT, model, _member_optimizer(cfg, model, optimizer, group, i), state)
            summaries.append(_finish(cfg, model, ds, out, state, device, extra={"together": len(cfgs)}))
        ckpt.unlink(missing_ok=True)  # every run's own directory now holds all of it
    return summaries


def _lock_all(held: contextlib.ExitStack, dirs: list) -> None:
    """Hold the lock of every directory the group writes (see supermask.run.lock) until `held` closes, and clear
    the temporary files of writes a kill cut off."""
    for d in dirs:
        held.enter_context(run_lock(d))
        remove_orphan_temps(Path(d))


class Stack(Trainee):
    """The runs of a group as one trainee of the training loop (supermask.run.loop): one forward pass over the
    stacked weights gives every run's loss, and one optimizer step over the stacks updates every run."""

    def __init__(self, cfgs: list[Config], group: Together, optimizer, ds, device, group_dir: Path,
                 states: list[dict], trackers: list):
        self.members = [Member(cfg, model, state, t) for cfg, model, state, t in zip(cfgs, group.models, states, trackers)]
        self.cfgs, self.stack, self.optimizer, self.ds, self.device, self.group_dir = cfgs, group, optimizer, ds, device, group_dir
        self.label = f"{len(cfgs)} runs, "
        # compiled as a lone run's model is: the group's forward, over the stacked weights, for every step
        self.forward = torch.compile(group.__call__) if cfgs[0].compile else group

    def batches(self, epoch, start_batch, replaced):  # data held in memory: nothing is replaced
        return group_batches(self.ds, self.cfgs, epoch, self.device, start_batch)

    def step(self, x, y, epoch, index):
        first = self.cfgs[0]
        logits = self.forward(to_layout(x, first.channels_last)).float()
        losses = per_run_losses(logits, y, first.label_smoothing)
        n = len(self.cfgs)
        yy = y.expand(n, -1) if y.dim() == 1 else y
        detached = losses.detach()
        tally = torch.stack([(detached * yy.shape[1]).double(), (logits.detach().argmax(-1) == yy).sum(1).double(),
                             torch.full_like(detached, yy.shape[1], dtype=torch.float64)], dim=1)
        return Step(losses.sum(), detached, tally)  # run i's scores get exactly the gradient of run i's loss

    def trainable(self, i):
        return [(name, scores[i]) for name, scores in zip(self.stack.names, self.stack.scores)]

    def evaluate(self, replaced):
        first = self.cfgs[0]
        return evaluate_together(self.stack, self.ds, first.eval_batch_size, self.device, first.channels_last, first.amp)

    def save(self, partials=None):
        states = [m.state for m in self.members]
        saved = states if partials is None else [{**state, "partial": p} for state, p in zip(states, partials)]
        _save_group(self.group_dir / GROUP_CHECKPOINT, self.cfgs, self.stack, self.optimizer, saved)
        for cfg, state in zip(self.cfgs, states):
            write_logs(Path(cfg.out_dir), state)

    def train_mode(self):
        self.stack.train(True)


def _save_group(path: Path, cfgs, group: Together, optimizer, states) -> None:
    tensors = {}
    for i, model in enumerate(group.models):
        tensors.update({f"run{i}.{k}": v for k, v in model.state_dict().items()})
    tensors.update({f"optimizer.{k}": v for k, v in optimizer_tensors(optimizer).items()})
    save_tensors(path, tensors, {"runs": [c.out_dir for c in cfgs], "states": states})


def _load_group(path: Path, group: Together, optimizer, dirs: list[str]) -> list[dict]:
    tensors, meta = load_tensors(path)
    if not meta or meta.get("runs") != dirs:
        raise ConfigError(f"{path} holds runs {meta.get('runs') if meta else None}, not {dirs}; delete it to start over")
    try:
        for i, model in enumerate(group.models):
            model.load_state_dict({k[len(f"run{i}."):]: v for k, v in tensors.items() if k.startswith(f"run{i}.")})
        load_optimizer_tensors(optimizer, {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")})
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{path} does not match these runs ({str(e).splitlines()[0][:160]})") from None
    return meta["states"]


def group_runs(group_dir: str | Path) -> list[str] | None:
    """The run directories of an unfinished group in `group_dir`, or None when there is none."""
    ckpt = Path(group_dir) / GROUP_CHECKPOINT
    if not ckpt.exists():
        return None
    _, meta = load_tensors(ckpt)
    return list(meta["runs"]) if meta and "runs" in meta else None


def read_group_file(path: str | Path) -> tuple[Path, list[Config]]:
    """(group_dir, configs) of a group file: {"group_dir": DIR, "runs": [{"config": ..., "overrides": {...}}]}."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read group file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    runs = spec.get("runs") if isinstance(spec, dict) else None
    if not isinstance(runs, list) or not runs or not spec.get("group_dir") or \
            not all(isinstance(r, dict) and isinstance(r.get("overrides", {}), dict) for r in runs):
        raise ConfigError(f'{path}: expected {{"group_dir": DIR, "runs": [{{"config": NAME, "overrides": {{...}}}}, ...]}}')
    return Path(spec["group_dir"]), [make_config(r.get("config"), r.get("overrides", {})) for r in runs]


def write_group_file(path: str | Path, group_dir: str | Path, runs: list[tuple[str | None, dict[str, Any]]]) -> None:
    write_json(path, {"group_dir": str(group_dir), "runs": [{"config": c, "overrides": o} for c, o in runs]})
