"""The training loop: a mask search (or dense training) with per-epoch evaluation, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supermask import data as data_lib
from supermask.core.convert import Report, convert, masks, weight_tensors
from supermask.core.labels import layer_labels
from supermask.core.methods import get_method
from supermask.data.prepare import as_trained
from supermask.errors import ConfigError
from supermask.models import MODELS, TOKEN_MODELS, build_model
from supermask.run import distributed
from supermask.run.checkpoint import (atomic_write_text, load_checkpoint, load_tensors, read_json,
                                      remove_orphan_temps, save_checkpoint, save_tensors, write_json)
from supermask.run.config import Config, dump_yaml, recorded_config
from supermask.run.files import CHECKPOINT, CONFIG_FILE, FINETUNE_METRICS, MASKS, SUMMARY
from supermask.run.lock import run_dir_is_empty, run_lock
# the loop's names that callers have long imported from here
from supermask.run.loop import (Member, Step, Trainee, TrainingError, autocast, fit, learning_rate,  # noqa: F401
                                new_state, write_logs)
from supermask.run.rundir import check_same_run
from supermask.run.schedule import fired_steps, never_fires
from supermask.run.trackers import Trackers, check_available, open_trackers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS (an Apple GPU) is not available; use device=cpu")
    return device


def set_threads(threads: int | None) -> None:
    """torch's CPU thread count, at most the machine's cores: beyond them threads only wait for each other
    (200 threads ran a digits epoch 45x slower on 2 cores), and OpenBLAS crashes at tens of thousands."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if threads > cores:
        raise ConfigError(f"threads={threads} is more than the {cores} CPU cores of this machine: choose at most {cores}")
    torch.set_num_threads(threads)  # masks are bit-identical only between runs on the same thread count


def check_model_fits_data(model: str, ds: data_lib.Dataset) -> None:
    """Refuse a model that cannot read the dataset's input (token ids or images) before anything is made."""
    if ds.tokens and model not in TOKEN_MODELS:
        raise ConfigError(f"model={model} reads images, and dataset {ds.name} is token sequences: use model="
                          f"{' or model='.join(sorted(TOKEN_MODELS))}")
    if not ds.tokens and model in TOKEN_MODELS:
        images = [m for m in MODELS if m not in TOKEN_MODELS]
        raise ConfigError(f"model={model} reads token sequences, and dataset {ds.name} is images: use an image model "
                          f"({', '.join(images)})")


def check_same_input(run_dir: Path, ds: data_lib.Dataset, prefix: str = "") -> None:
    """Refuse data of another shape (channels, image size or sequence length, classes) than the run in `run_dir`
    trained on, as its summary.json records, before its checkpoint meets a model it cannot fit."""
    summary = run_dir / SUMMARY
    if not summary.is_file():
        return
    recorded = read_json(summary)
    differ = [f"{key} {recorded[key]} there, {getattr(ds, key)} in {ds.name}"
              for key in ("in_channels", "image_size", "num_classes")
              if isinstance(recorded.get(key), int) and recorded[key] != getattr(ds, key)]
    if differ:
        raise ConfigError(f"{prefix}{run_dir} was trained on data of another shape ({'; '.join(differ)})")


# float32 values a run holds per parameter at least: the weight, its score (or nothing, dense), the gradient and
# the optimizer's state (SGD's momentum; Adam holds two).
TRAINING_COPIES = 4


def memory_of(device: torch.device) -> int | None:
    """Bytes of memory on `device`: the GPU's, else the machine's RAM (None where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def network_inputs(cfg: Config, ds) -> dict[str, int | bool]:
    """What the run's network is built from besides its name and width: the data's input shape and classes,
    `cfg.outputs` outputs where set (at least the classes; the others are never a label), and affine BatchNorm
    where set."""
    inputs = data_lib.model_inputs(ds)
    if cfg.outputs is not None:
        if cfg.outputs < inputs["num_classes"]:
            raise ConfigError(f"outputs={cfg.outputs} is fewer than the {inputs['num_classes']} classes of {ds.name}")
        inputs["num_classes"] = cfg.outputs
    if cfg.affine_bn:
        inputs["affine_bn"] = True
    return inputs


def check_model_size(cfg: Config, ds: data_lib.Dataset, device: torch.device, runs: int = 1) -> None:
    """Refuse a model (`runs` of them) whose training state would not fit in the device's memory, counting its
    parameters on the meta device, where nothing is allocated."""
    inputs = network_inputs(cfg, ds)
    try:
        with torch.device("meta"):
            skeleton = build_model(cfg.model, width=cfg.width, **inputs)
        params = sum(p.numel() for p in skeleton.parameters())
    except (RuntimeError, OverflowError, TypeError, ValueError):  # a size beyond int64, or a tensor beyond torch
        raise ConfigError(f"width={cfg.width:g} makes model={cfg.model} too large for torch to describe: choose a "
                          f"smaller width") from None
    available = memory_of(device)
    need = TRAINING_COPIES * 4 * params * runs
    if available is not None and need > available:
        of = f"{runs} runs of " if runs > 1 else ""
        raise ConfigError(f"{of}model={cfg.model} at width={cfg.width:g} has {params:,} parameters "
                          f"({4 * params / 2**30:,.3g} GiB as float32); training holds about {TRAINING_COPIES} copies "
                          f"({need / 2**30:,.3g} GiB), more than the {available / 2**30:,.3g} GiB of {device}: choose "
                          f"a smaller width")


def build(cfg: Config, ds: data_lib.Dataset) -> nn.Module:
    """The model of `cfg` for the dataset's shape, converted for the configured method."""
    check_model_fits_data(cfg.model, ds)
    if cfg.init_from:
        check_same_input(Path(cfg.init_from), ds, "init_from: ")
    model = build_model(cfg.model, width=cfg.width, **network_inputs(cfg, ds))
    if cfg.init_from:
        # Search masks over a dense run's trained weights instead of random ones (weight_init is "keep").
        load_checkpoint(Path(cfg.init_from) / CHECKPOINT, model)
    return convert(model, cfg.method, cfg.prune_rate, weight_init=cfg.weight_init, scale_fan=cfg.scale_fan,
                   weight_seed=cfg.weight_seed, score_seed=cfg.score_seed, skip=cfg.skip_layers + cfg.skip_params,
                   include=cfg.include_params, scale_fan_by=cfg.scale_fan_by, weight_source=cfg.weight_source,
                   prune_scope=cfg.prune_scope, layer_streams=cfg.layer_streams, layer_density=cfg.layer_density,
                   score_init=cfg.score_init, options=get_method(cfg.method).options_from(cfg) if cfg.masked else None)


def place(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """Move `model` to `device`, channels-last when configured: a conv given a channels-last weight computes in
    that layout (about 1.8x faster on a 2-core CPU for Conv-4) and keeps its activations so; masks do not
    depend on the layout, as they are computed on the scores' logical order."""
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"skip_layers={cfg.skip_layers} leaves every layer dense: nothing is left to search")
    return optimizer_for(cfg, params)


def optimizer_for(cfg: Config, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    # decoupled decay is the training loop's own step (run/loop.py `decay_`), not the optimizer's
    decay = cfg.weight_decay if cfg.weight_decay_mode == "coupled" else 0.0
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay)
    if cfg.optimizer == "rmsprop":  # torch's defaults, as SupSup's published code takes them
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=decay)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(weights supermask can mask, how many of them the subnetwork keeps)."""
    total = sum(w.numel() for w in weight_tensors(model).values())
    pruned = sum(int((~m).sum()) for m in masks(model).values())
    return total, total - pruned


def kept_fractions(model: nn.Module) -> dict[str, float]:
    """Each masked layer's kept fraction, as tracker scalars tagged with the layer's readable label."""
    labels = layer_labels(model)
    return {f"kept_fraction/{labels.get(name, name)}": m.float().mean().item() for name, m in masks(model).items()}


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the layout the model computes in."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, ds: data_lib.Dataset, batch_size: int, device: torch.device,
             group: distributed.Group = distributed.Group(), amp: bool = False,
             replaced: data_lib.ReplacedCount | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) on the test split (split across the processes of a data-parallel run); the samples of
    a streamed set replaced because their image could not be read, summed over the processes, go to `replaced`."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, replaced samples
    tally = data_lib.ReplacedCount()
    for x, y in data_lib.eval_batches(ds, batch_size, device=device, shard=(group.rank, group.world), replaced=tally):
        with autocast(amp, device):
            logits = model(x).float()
        sums[0] += nn.functional.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
    sums[2] += tally.count
    model.train(was_training)
    loss_sum, correct, bad = distributed.all_sum(sums, group).tolist()
    if replaced is not None:
        replaced.count += int(bad)
    n = len(ds.test_y)
    return loss_sum / n, correct / n


def _forward(net: nn.Module, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
    try:
        return net(x).float()
    except ValueError:
        # A one-image slice through training BatchNorm fails where a feature map is 1x1 (BatchNorm's own check);
        # told by its cause, not by the error's wording.
        if len(x) != 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()):
            raise
        raise ConfigError(f"epoch {epoch + 1} step {step + 1}: BatchNorm got one value per channel ({len(x)} image(s) "
                          "in this process's slice of the batch, on a 1x1 feature map); choose a batch_size that "
                          "leaves no single-image slice, fewer processes, or a larger image_size") from None


class Lone(Trainee):
    """One run: alone in its process, or one process of a data-parallel run (`group`), whose forward pass `net`
    runs (the DistributedDataParallel wrapper, or the compiled model)."""

    def __init__(self, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, ds: data_lib.Dataset,
                 device: torch.device, out_dir: Path, state: dict[str, Any], trackers: Trackers,
                 group: distributed.Group = distributed.Group()):
        self.members = [Member(cfg, model, state, trackers)]
        self.cfg, self.model, self.optimizer, self.ds, self.device, self.out_dir = cfg, model, optimizer, ds, device, out_dir
        self.group = group
        self.net = distributed.wrap(model, group, device)
        if cfg.compile:
            self.net = torch.compile(self.net)
        # One process: the batch's mean loss. Several: each slice's summed loss over the global batch's size (times
        # the processes, whose gradients DDP averages), so every sample weighs the same however the batch is split
        # and an empty slice adds zero.
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                           reduction="sum" if group.active else "mean")

    def batches(self, epoch, start_batch, replaced):
        cfg, group = self.cfg, self.group
        return data_lib.train_batches(self.ds, cfg.batch_size, seed=cfg.data_seed, epoch=epoch, augment=cfg.augment,
                                      device=self.device, shard=(group.rank, group.world), start_batch=start_batch,
                                      replaced=replaced, crop=cfg.augment_crop)

    def step(self, x, y, epoch, index):
        cfg, group = self.cfg, self.group
        logits = _forward(self.net, input_layout(x, cfg.channels_last), epoch, index)
        loss = self.loss_fn(logits, y)
        per_sample = (min(cfg.batch_size, len(self.ds.train_y) - index * cfg.batch_size) / group.world
                      if group.active else len(y))
        if group.active:
            loss = loss / per_sample
        detached = loss.detach()
        tally = torch.stack([(detached * per_sample).double(), (logits.detach().argmax(1) == y).sum().double(),
                             detached.new_tensor(len(y), dtype=torch.float64)])
        return Step(loss, detached.reshape(1), tally.unsqueeze(0))

    def trainable(self, i):
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def evaluate(self, replaced):
        cfg = self.cfg
        return [evaluate(self.model, self.ds, cfg.eval_batch_size, self.device, self.group, cfg.amp, replaced)]

    def meta(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the checkpoint's metadata holds: the run's state (and where inside an epoch it was saved)."""
        state = self.members[0].state
        return state if partial is None else {**state, "partial": partial}

    def write_logs(self) -> None:
        write_logs(self.out_dir, self.members[0].state)

    def save(self, partials=None):
        if partials is None:
            if self.group.main:
                save_checkpoint(self.out_dir / CHECKPOINT, self.model, self.optimizer, self.meta())  # the source of truth
                self.write_logs()
            return
        # Saved: the processes' mean BatchNorm statistics, as at the end of an epoch; kept: each its own, so a run
        # that is never resumed computes exactly as without these checkpoints (the statistics are linear in
        # their start, so a resumed data-parallel run ends with the same mean within float tolerance).
        own = [b.clone() for b in self.model.buffers()] if self.group.active else []
        distributed.average_buffers(self.model, self.group)
        if self.group.main:
            save_checkpoint(self.out_dir / CHECKPOINT, self.model, self.optimizer, self.meta(partials[0]))
            self.write_logs()
        for b, saved in zip(self.model.buffers(), own):
            b.copy_(saved)

    def train_mode(self):
        self.net.train()

    def end_of_pass(self):
        distributed.average_buffers(self.model, self.group)  # one set of BatchNorm statistics: evaluated and saved

    def agree(self, where, buffers=False):
        distributed.check_agreement(self.model, self.group, where, buffers=buffers)


class Finetune(Lone):
    """A search's second stage: the found network's weights trained (`finetune_epochs`), its progress under the
    search state's "finetune" key, its epochs in finetune_metrics.jsonl."""

    def __init__(self, cfg: Config, model, optimizer, ds, device, out_dir: Path, search: dict[str, Any],
                 trackers: Trackers):
        super().__init__(finetune_config(cfg), model, optimizer, ds, device, out_dir, search["finetune"], trackers)
        self.search, self.label = search, "fine-tune, "

    def meta(self, partial=None):
        return {**self.search, "finetune": super().meta(partial)}

    def write_logs(self) -> None:
        write_logs(self.out_dir, self.search)
        atomic_write_text(self.out_dir / FINETUNE_METRICS,
                          "".join(json.dumps(r) + "\n" for r in self.members[0].state["history"]))


def finetune_config(cfg: Config) -> Config:
    """The second stage's training: the found network's weights, trained as a dense run (no mask hooks, no loss
    term) with SGD at finetune_lr, its multistep schedule and finetune_weight_decay."""
    return dataclasses.replace(cfg, method="dense", epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, lr_scaling="none",
                               lr_schedule="multistep", warmup_epochs=0, optimizer="sgd",
                               weight_decay=cfg.finetune_weight_decay, weight_decay_mode="coupled", iwr_every=None,
                               iterand_every_steps=None, iterand_every_epochs=None)


def start_finetune(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Ready the found network for weight training (the method's `finetune_start`) and its optimizer."""
    return optimizer_for(finetune_config(cfg), get_method(cfg.method).finetune_start(model))


def default_out_dir(cfg: Config) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{cfg.method}-p{cfg.prune_rate:g}-{stamp}"


def load_data(cfg: Config, held_out: bool = False) -> data_lib.Dataset | data_lib.StreamDataset | data_lib.ShardDataset:
    """The run's data, held in memory or streamed as cfg.data_mode says (task `cfg.task` of a task stream), without
    the `cfg.holdout` training images held out; with `held_out`, those images as the test split."""
    ds = data_lib.load_dataset(cfg.dataset, cfg.data_dir, mode=cfg.data_mode, image_size=cfg.image_size,
                               num_workers=cfg.num_workers)
    kept, held = as_trained(ds, task_stream=cfg.task_stream, task=cfg.task, normalization=cfg.normalization,
                            holdout=cfg.holdout, holdout_seed=cfg.holdout_seed)
    if not held_out:
        return kept
    if held is None:
        raise ConfigError("this run holds out no training images (holdout=0)")
    return held


def resolve_data_paths(cfg: Config, ds: data_lib.Dataset) -> None:
    """Absolute paths in place of relative ones in `cfg`, so that the saved config.yaml re-runs and evaluates from
    any directory (summary.json records the data by file name and checksum instead)."""
    if cfg.dataset.strip().lower() not in data_lib.DATASET_NAMES:
        cfg.dataset = ds.source  # an image folder or archive, found and resolved by load_dataset
    if cfg.data_dir:
        cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())


def run(cfg: Config, *, resume: bool = False, progress: bool = True,
        data: data_lib.Dataset | None = None) -> dict[str, Any]:
    """Train `cfg` to the end (or continue it with `resume`) and return the run's summary; `data`, when given, is
    the dataset it trains on instead of the one its config names (a task of a user's own stream)."""
    if cfg.tasks is not None:
        raise ConfigError(f"tasks={cfg.tasks} is a stream of runs: train it with supermask.multi.tasks.train_tasks")
    with contextlib.ExitStack() as held:  # the run directory's lock, for the run's life
        return _run(cfg, resume, progress, held, data)


def _run(cfg: Config, resume: bool, progress: bool, held: contextlib.ExitStack,
         data: data_lib.Dataset | None = None) -> dict[str, Any]:
    if resume and not cfg.out_dir:
        raise ConfigError("--resume needs the run's out_dir=DIR")
    if distributed.launched() and not cfg.out_dir:
        raise ConfigError("a data-parallel run needs out_dir=DIR (every process must write to the same run)")
    check_available(cfg.logger)
    set_threads(cfg.threads)
    device = distributed.local_device() if distributed.launched() and cfg.device == "auto" else pick_device(cfg.device)
    ds = load_data(cfg) if data is None else data
    resolve_data_paths(cfg, ds)
    if cfg.augment is None:
        cfg.augment = ds.augment
    check_model_fits_data(cfg.model, ds)  # before the run directory is made, like the checks below
    data_lib.check_augment(ds, cfg.augment)
    check_model_size(cfg, ds, device)
    model = place(build(cfg, ds), cfg, device)
    ds = data_lib.on_device(ds, device)
    optimizer = make_optimizer(cfg, model)
    group = distributed.setup(device)
    if cfg.finetune_epochs and group.active:
        raise ConfigError("finetune_epochs trains in one process: start the run without torchrun")
    warning = never_fires(cfg, data_lib.train_steps(ds, cfg.batch_size, seed=cfg.data_seed, world=group.world))
    if warning and group.main:
        print(f"supermask: warning: {warning}", file=sys.stderr)

    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    cfg.out_dir = str(out_dir)
    ckpt = out_dir / CHECKPOINT
    state = new_state()
    # A process that fails alone tells the others at the next check (stop_if_any_failed), so none waits for it.
    failure, fresh = None, not ckpt.exists()
    try:
        if not fresh:
            if not resume:
                raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another out_dir")
            if group.main:  # the one writer, for the run's life
                held.enter_context(run_lock(out_dir))
                remove_orphan_temps(out_dir)  # writes a kill cut off: the files they would have replaced stand
            check_same_run(cfg, out_dir)
            if "finetune" in (load_tensors(ckpt)[1] or {}):  # saved in the second stage: its weights and optimizer
                optimizer = start_finetune(cfg, model)
            state = load_checkpoint(ckpt, model, optimizer)
        else:
            if out_dir.exists() and not out_dir.is_dir():
                raise ConfigError(f"out_dir {out_dir} exists and is not a directory; choose another out_dir")
            if out_dir.exists() and not run_dir_is_empty(out_dir) and not resume:
                raise ConfigError(f"out_dir {out_dir} exists and is not empty; choose another out_dir")
            if group.main:  # the one writer, for the run's life (creates the directory)
                held.enter_context(run_lock(out_dir))
                remove_orphan_temps(out_dir)
    except Exception as e:  # noqa: BLE001 - raised by stop_if_any_failed
        failure = e
    distributed.stop_if_any_failed(failure, group, device)  # also: every process has seen the folder empty
    if fresh and group.main:
        try:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create out_dir {out_dir} ({e.strerror or e})") from None
            atomic_write_text(out_dir / CONFIG_FILE, dump_yaml(cfg))
        except Exception as e:  # noqa: BLE001 - raised by stop_if_any_failed
            failure = e
    distributed.stop_if_any_failed(failure, group, device)

    trackers = open_trackers(cfg.logger, out_dir, out_dir.name, state["step"]) if group.main else Trackers()
    try:
        if not state["history"]:
            trackers.hparams(cfg.to_dict(), {"epoch/test_acc": 0.0, "epoch/train_acc": 0.0, "epoch/test_loss": 0.0})
            trackers.scalars(kept_fractions(model), 0)
        if "finetune" not in state:
            fit(Lone(cfg, model, optimizer, ds, device, out_dir, state, trackers, group), ds, device, progress and group.main)
        if not cfg.finetune_epochs:
            return _finish(cfg, model, ds, out_dir, state, device, group)
        if "finetune" not in state:  # its steps count on from the search's, so trackers log one series
            optimizer, state["finetune"] = start_finetune(cfg, model), {**new_state(), "step": state["step"]}
        fit(Finetune(cfg, model, optimizer, ds, device, out_dir, state, trackers), ds, device, progress)
        search, tuned = state["history"][-1], state["finetune"]["history"][-1]
        # the run's network is the fine-tuned one; what the search found, with the random weights, is kept beside it
        return _finish(cfg, model, ds, out_dir, state, device, group, extra={
            "test_acc": tuned["test_acc"], "train_acc": tuned["train_acc"],
            "best_test_acc": state["finetune"]["best_test_acc"], "best_epoch": state["finetune"]["best_epoch"],
            "search_test_acc": search["test_acc"], "search_train_acc": search["train_acc"],
            "finetune_epochs": cfg.finetune_epochs, "seconds": round(state["seconds"] + state["finetune"]["seconds"], 3)})
    finally:
        trackers.close()


def _finish(cfg: Config, model, ds, out_dir: Path, state: dict, device,
            group: distributed.Group = distributed.Group(), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    distributed.check_agreement(model, group, "training", buffers=True)
    total, kept = parameter_counts(model)
    if group.main:
        found = masks(model)
        # safetensors stores tensors sorted by name; the metadata keeps the layers' order in the model and their
        # readable labels (see supermask.core.labels)
        save_tensors(out_dir / MASKS, found, {"model": cfg.model, "width": cfg.width, "method": cfg.method,
                                                            "prune_rate": cfg.prune_rate, "layers": list(found),
                                                            "labels": layer_labels(model)})
    final = state["history"][-1]
    streamed = data_lib.is_streamed(ds)
    if cfg.holdout:  # the final network on the training images it never saw (every process: a collective)
        held = evaluate(model, load_data(cfg, held_out=True), cfg.eval_batch_size, device, group, cfg.amp)
        extra = {"holdout_images": cfg.holdout, "holdout_loss": held[0], "holdout_acc": held[1], **(extra or {})}
    summary = {
        "method": cfg.label, "base_method": cfg.method, "model": cfg.model, "num_classes": ds.num_classes,
        "in_channels": ds.in_channels, "image_size": ds.image_size, "width": cfg.width, "dataset": ds.name,
        "data_mode": "stream" if streamed else "memory", "dataset_source": Path(ds.source).name,
        # a streamed set's checksums read all its files, once, in the process that writes the summary
        **(data_checksums(ds) if group.main or not streamed else {}),
        # the last epoch's: a streamed folder's every training image and a set's every evaluation image are read
        # each epoch, so these count the unreadable ones (a warning named each)
        **({"images_replaced": {"train": final.get("train_images_replaced", 0),
                                "test": final.get("test_images_replaced", 0)}} if streamed else {}),
        "prune_rate": cfg.prune_rate, "weight_init": cfg.weight_init,
        "scale_fan": cfg.scale_fan, "weight_seed": cfg.weight_seed, "score_seed": cfg.score_seed,
        "data_seed": cfg.data_seed, "epochs": cfg.epochs, "epochs_run": len(state["history"]),
        "train_steps": state["step"], "lr_scaling": cfg.lr_scaling,
        # the schedule's peak, which a run shorter than its warm-up never reaches, and the highest rate it used
        # (summaries before these two recorded the scheduled peak as "peak_lr")
        "scheduled_peak_lr": cfg.peak_lr, "max_lr_used": max(row["lr"] for row in state["history"]),
        "test_acc": final["test_acc"],
        "best_test_acc": state["best_test_acc"], "best_epoch": state["best_epoch"],
        "train_acc": final["train_acc"], "params_total": total, "params_kept": kept, "prune_scope": cfg.prune_scope,
        # each masked tensor's kept fraction (under prune_scope=global, what its scores won of the total)
        "layer_density": {name: round(m.float().mean().item(), 6) for name, m in masks(model).items()},
        "seconds": round(state["seconds"], 3), "device": str(device), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": torch.get_num_threads(),
        "out_dir": str(out_dir), "processes": group.world, "preprocessing": data_lib.preprocessing(ds),
        **{f"{kind}_steps": n for kind, n in fired_steps(state["schedule"]).items()}, **(extra or {}),
    }
    if isinstance(getattr(model, "supermask_report", None), Report):  # what convert masked, froze or trained
        summary["convert"] = model.supermask_report.to_dict()
    if group.main:
        write_json(out_dir / SUMMARY, summary)
    distributed.barrier(group)  # the run's files are complete when any process returns
    return summary


def load_run_model(run_dir: str | Path, *, device: str = "auto",
                   data: dict[str, Any] | None = None) -> tuple[Config, data_lib.Dataset, nn.Module, dict]:
    """(config, dataset, model with the run's last checkpoint, checkpoint metadata) of a run directory; `data`
    may override where the dataset is found (`dataset`, `data_dir`)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = recorded_config(str(run_dir / CONFIG_FILE), {"device": device, **(data or {})})
    ds = load_data(cfg)
    check_model_fits_data(cfg.model, ds)  # the clearer reason first
    check_same_input(run_dir, ds)
    model = place(build(cfg, ds), cfg, pick_device(cfg.device))
    meta = load_checkpoint(run_dir / CHECKPOINT, model)
    return cfg, ds, model, meta


def data_checksums(ds: data_lib.Dataset) -> dict[str, str]:
    """What summary.json records of the data: `dataset_sha256` (both splits: decoded images and labels of a set in
    memory; file names, labels and file bytes of a streamed one) and, streamed, `eval_split_sha256` (the evaluation
    split alone, which is all `eval` reads)."""
    if not data_lib.is_streamed(ds):
        return {"dataset_sha256": data_lib.content_sha256(ds)}
    return {"dataset_sha256": data_lib.content_sha256(ds), "eval_split_sha256": data_lib.split_sha256(ds, "test")}


def data_check(ds: data_lib.Dataset, recorded: dict[str, Any], replaced: data_lib.ReplacedCount) -> dict[str, Any]:
    """The data's name and checksum, and whether it is the data the run `recorded` (None when it recorded none).
    A streamed set is compared by its evaluation split (a run before `eval_split_sha256` recorded only its listing,
    so it gives None)."""
    if data_lib.is_streamed(ds):
        sha, key = data_lib.split_sha256(ds, "test"), "eval_split_sha256"
        more = {"images_replaced": replaced.count}
    else:
        sha, key, more = data_lib.content_sha256(ds), "dataset_sha256", {}
    saved = recorded.get(key)
    return {"dataset_source": Path(ds.source).name, key: sha,
            "same_data_as_run": sha == saved if isinstance(saved, str) else None, **more}


def evaluate_run(run_dir: str | Path, *, device: str = "auto", dataset: str | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Rebuild a finished run from its config and checkpoint and measure its test accuracy again (on `dataset` /
    in `data_dir` when given, e.g. a copy of the data on another machine)."""
    data = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None}
    cfg, ds, model, meta = load_run_model(run_dir, device=device, data=data)
    replaced = data_lib.ReplacedCount()
    loss, acc = evaluate(model, ds, cfg.eval_batch_size, pick_device(cfg.device), amp=cfg.amp, replaced=replaced)
    total, kept = parameter_counts(model)
    summary_file = Path(run_dir) / SUMMARY
    recorded = read_json(summary_file) if summary_file.is_file() else {}
    return {"run": str(run_dir), **checkpoint_position(meta), "test_loss": loss, "test_acc": acc,
            "params_total": total, "params_kept": kept, **data_check(ds, recorded, replaced)}


def checkpoint_position(meta: dict[str, Any]) -> dict[str, Any]:
    """Where in its run a checkpoint was saved (epochs finished, batches into the next one) and the test accuracy
    recorded for the network it holds: only a checkpoint at an epoch's end has one (each epoch's test accuracy is
    measured on the network saved at its end); one inside an epoch holds a network no evaluation has seen. A
    checkpoint of a search's fine-tuning (`finetune_epochs`) is placed in that stage, its epochs counted in it."""
    if "finetune" in meta:
        return {**checkpoint_position(meta["finetune"]), "stage": "fine-tuning"}
    epoch, batch = meta["epoch"], (meta.get("partial") or {}).get("batch", 0)
    last = meta["history"][-1]["test_acc"] if meta["history"] else None
    position = {"epoch": epoch, "batch": batch,
                "position": f"{batch} batches into epoch {epoch + 1}" if batch else f"end of epoch {epoch}"}
    if not batch:
        return {**position, "recorded_test_acc": last}
    measured = f" (the last recorded, {last:.4f}, is that of the network at the end of epoch {epoch})" if last is not None else ""
    return {**position, "recorded_test_acc": None,
            "note": f"the checkpoint is {batch} batches into epoch {epoch + 1}: no test accuracy was recorded for its "
                    f"network{measured}"}
