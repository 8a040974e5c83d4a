"""The run configuration: one typed dataclass, loaded from YAML plus `key=value` overrides, validated once.

Fields left as None take the paper's recipe for the chosen method when the config is resolved, and the resolved
values are what a run records in its config.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from supermask.core.convert import LAYER_STREAMS, PRUNE_SCOPES
from supermask.core.density import LAYER_DENSITIES
from supermask.core.init import SCALE_FAN_BY, SCORE_INITS, WEIGHT_INITS, source_size
from supermask.core.iterand import ITERAND_REDRAWS
from supermask.core.mask import PRUNED_COUNTS
from supermask.core.methods import ALPHA_COUNTS, BIPROP_GRADS, SCORE_RANKS, default_init, get_method, mask_methods, method_names
from supermask.data import DATA_MODES, DATASET_NAMES, default_data_dir
from supermask.data.batches import CROPS
from supermask.data.load import NORMALIZATIONS
from supermask.data.base import looks_like_path
from supermask.errors import ConfigError
from supermask.run.configs import builtin_configs
from supermask.run.recipes import paper_epochs, paper_schedule
from supermask.models import MODELS
from supermask.run.trackers import TRACKERS
from supermask.run.files import CHECKPOINT, CONFIG_FILE

# Method names of the papers' tables that are a base method plus a schedule, with the paper's settings.
METHOD_ALIASES = ("edge-popup+iwr", "biprop+iwr", "iterand")


def _opt(default: Any, help: str, **kw) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help}, **kw)


# The defaults are the default job (the built-in `digits` config): a short search on 8x8 digits, no download.
@dataclass
class Config:
    model: str = _opt("small-conv", f"architecture: {', '.join(MODELS)}")
    width: float = _opt(1.0, "width multiplier of every hidden layer")
    method: str = _opt("edge-popup", f"{', '.join(method_names())} (or a registered method); or {', '.join(METHOD_ALIASES)} "
                                      "(a base method plus the paper's schedule)")
    prune_rate: float = _opt(0.5, "fraction of each layer's weights REMOVED, in [0, 1)")
    weight_init: str | None = _opt(None, f"{', '.join(WEIGHT_INITS)} (default: signed-constant for edge-popup, kaiming-normal otherwise)")
    scale_fan: bool | None = _opt(None, "divide fan_in by the keep fraction in the weight init (default: true for biprop)")
    scale_fan_by: str = _opt("kept", "what the scaled fan multiplies fan_in by: kept (the keep fraction 1 - p, as the "
                                     "papers write it) or pruned (p, what the published builders compute, their "
                                     "prune_rate being the kept fraction); the two agree at p = 0.5")
    prune_scope: str = _opt("layer", "where prune_rate applies: layer (each masked tensor prunes floor(p n) of its n) "
                                     "or global (the top 1 - p of |scores| over all masked weights together)")
    layer_density: str = _opt("uniform", "each masked tensor's share: uniform (prune_rate in each) or er (SupSup's "
                                         "Erdős–Rényi budget, min(0.5, s (c_in + c_out) / n) kept in a layer of n, s "
                                         "solved so that all keep 1 - prune_rate together; prune_rate >= 0.5)")
    layer_streams: str = _opt("independent", "where each masked tensor's random weights and scores come from: "
                                             "independent (a stream of its own) or shared (every tensor from the start "
                                             "of one stream per seed, as the IWR code reseeds before each layer: "
                                             "tensors of one shape get the same values)")
    weight_source: str = _opt("full", "where a mask search's random weights come from: full (a fresh draw per weight) "
                                      "or shared:N (every masked tensor tiled from one vector of N random values, "
                                      "each in its own order, scaled to its init)")
    biprop_grad: str | None = _opt(None, "biprop's score gradient: weight (the published code's, dL/dW_eff * W * sign(S)) "
                                         "or alpha (dL/dW_eff * alpha * sign(W) * sign(S), an ablation) [default: weight "
                                         "for biprop; only biprop takes it]")
    finetune_epochs: int = _opt(0, "after the mask search, train the found network's kept weights this many epochs "
                                   "(gem-miner's second stage: the mask becomes its flag; 0: off)")
    finetune_lr: float = _opt(0.01, "fine-tuning: SGD learning rate, divided by 10 after 80/150 and 120/150 of its "
                                    "epochs (the published MultiStepLR)")
    finetune_weight_decay: float = _opt(1e-4, "fine-tuning: weight decay on the trained weights")
    gem_period: int | None = _opt(None, "gem-miner: a pruning round every T epochs, after the 0-based epochs T, 2T, ... "
                                        "[default 5; only gem-miner takes it]")
    gem_lambda: float | None = _opt(None, "gem-miner: weight of the loss term lambda * sum(scores^2), >= 0 [default 1e-4]")
    gem_rounding: str | None = _opt(None, "gem-miner: how many a round prunes: exact (the flag lands exactly on the "
                                          "target density) or published (ceil(r n_active), ties pruned; ends a few "
                                          "weights below it) [default exact]")
    signed_threshold: float | None = _opt(None, "signed-supermask: each layer's threshold tau as a fraction of its "
                                                "largest initial |score| (fixed after init) [default 0.4]")
    multicoat_scale: str | None = _opt(None, "multicoat: the effective weight W * m (published, the code's: no "
                                             "division by C) or W * m / C (mean; for networks without BatchNorm) "
                                             "[default published]")
    multicoat_prune_rates: list[float] | None = _opt(None, "multicoat: the coats' prune fractions, increasing, the "
                                                           "first equal to prune_rate, e.g. [0.7, 0.9212, 0.9685] (the "
                                                           "published ResNet-50 coats, the default at prune_rate=0.7)")
    biprop_alpha_count: str | None = _opt(None, "biprop's alpha denominator: exact (the kept count) or published "
                                                "(the published code's int(k n), one less whenever k n is not an "
                                                "integer) [default exact; only biprop takes it]")
    pruned_count: str = _opt("exact", "how many a top-k layer of n weights prunes: exact (floor(prune_rate n)) or "
                                      "published (the published code's int((1 - k) n) in floats, k = 1 - prune_rate: "
                                      "one fewer in some layers at 10, 20 and 70% pruned) [edge-popup and biprop]")
    affine_bn: bool = _opt(False, "dense runs: learn BatchNorm's scale and shift (the published dense ResNet-18's "
                                  "LearnedBatchNorm); mask searches keep BatchNorm non-affine, as the papers' code does")
    score_rank: str = _opt("magnitude", "edge-popup: what its top-k keeps the largest of: magnitude (|scores|, the "
                                        "Edge-Popup paper's and hidden-networks' rule) or signed (the scores "
                                        "themselves, with an identity straight-through gradient: IteRand's published "
                                        "code)")
    score_init: str = _opt("method", "the initial scores: method (the method's own: U(±1/sqrt(fan_in)) for edge-popup "
                                     "and biprop) or kaiming-uniform (U(±sqrt(6/fan_in)): IteRand's published code) "
                                     "[edge-popup and biprop]")
    skip_layers: list[str] = _opt(None, "layers left dense: qualified names, glob patterns, 'first', 'last'", )
    skip_params: list[str] = _opt(None, "weights left dense, by qualified parameter name (e.g. '*.in_proj_weight'), globs, 'first', 'last'")
    include_params: list[str] = _opt(None, "mask only these weights (same patterns as skip_params; default: every weight)")
    iwr_every: int | None = _opt(None, "IWR: recycle every F epochs (off when unset)")
    iwr_every_fraction: float | None = _opt(None, "IWR: F as a fraction of the epochs, for short runs (F = max(1, round(f * epochs)))")
    iwr_rate: float = _opt(0.1, "IWR: fraction r of each layer's weights overwritten per step, in [0, 0.5]")
    iwr_warmup: int = _opt(0, "IWR: no recycling until after epoch E0")
    iwr_ablation: bool = _opt(False, "IWR ablation: copy from the ranks [n, 2n) from the bottom instead of the top")
    iterand_every_steps: int | None = _opt(None, "IteRand: redraw pruned weights every K optimizer steps (off when unset)")
    iterand_every_epochs: int | None = _opt(None, "IteRand: redraw every F epochs instead (off when unset)")
    iterand_rate: float = _opt(0.1, "IteRand: probability r that a pruned weight is redrawn")
    iterand_timing: str = _opt("after", "IteRand's step schedule: after (after the optimizer steps K, 2K, ...) or before "
                                        "(after the steps K - 1, 2K - 1, ...: before every K-th, as the published "
                                        "trainer redraws)")
    iterand_redraw: str = _opt("init", "IteRand: what a redrawn pruned weight gets: init (a fresh draw from its layer's "
                                       "init, IteRand's rule) or zero (0: one version of the IWR paper's code, whose "
                                       "signed constant of zeros is 0)")
    init_from: str | None = _opt(None, "a dense run directory: search masks over its trained weights instead of random ones")
    weight_seed: int = _opt(0, "seed of the random weights, an integer in [0, 2^63 - 1] (as are the other seeds)")
    score_seed: int = _opt(0, "seed of the initial scores")
    data_seed: int = _opt(0, "seed of the data order and augmentation")
    outputs: int | None = _opt(None, "the network's outputs, when more than the data's classes: the extra ones are never "
                                     "a label (SupSup's superfluous neurons: 500 in its permuted-MNIST scripts)")
    task_stream: str | None = _opt(None, "per-task masks over one random network (SupSup): permuted-mnist (with "
                                         "dataset=mnist) or split-cifar10 (with dataset=cifar10)")
    tasks: int | None = _opt(None, "train this many tasks one after another, each with its own scores and mask over "
                                   "the same random weights, a run directory per task (needs task_stream)")
    task: int | None = _opt(None, "the task of task_stream (0-based) this run trains on; set for each task of a "
                                  "tasks= run")
    dataset: str = _opt("digits", "digits, mnist, cifar10, cifar100, listops (token sequences), imagenet "
                                 "(DATA/imagenet, streamed), or a path to an image folder / .tar.gz or to a folder "
                                 "of WebDataset shards (train-*.tar and val-*.tar, streamed)")
    data_dir: str | None = _opt(None, "folder holding the datasets (default: $SUPERMASK_DATA)")
    holdout: int = _opt(0, "training images held out, never trained on: the final network's accuracy on them is "
                           "summary.json's holdout_acc (5000: the published IteRand and Gem-Miner code's 45,000 of "
                           "CIFAR-10's 50,000; sets held in memory)")
    holdout_seed: int = _opt(777, "which images holdout takes: torch's random_split with a generator of this seed "
                                  "(777: IteRand's code)")
    data_mode: str = _opt("auto", "memory (decode the whole set once), stream (decode each image when a batch needs it, "
                                  "in worker processes: image folders too large for memory or of mixed sizes), or auto "
                                  "(stream folders with a val/ split, of mixed sizes, or over 4 GiB decoded)")
    image_size: int | None = _opt(None, "side in pixels of streamed images after their crop (default: 224); a set in "
                                        "memory keeps its own")
    num_workers: int | None = _opt(None, "processes decoding streamed images (default: min(8, CPU cores); 0: none)")
    augment: bool | None = _opt(None, "random crop (pad 4) + horizontal flip; RandomResizedCrop + flip for streamed images "
                                      "(default: on for 32-pixel images and streamed sets)")
    augment_crop: str = _opt("pad", "the augmentation's crop of a set held in memory: pad (a random crop of the image "
                                    "padded by 4) or pad-resized (pad 4, then torchvision's RandomResizedCrop, scale "
                                    "0.08-1, back to the image size: IteRand's published CIFAR pipeline)")
    normalization: str = _opt("dataset", "the per-channel mean and std images are normalized by: dataset (the set's "
                                         "own) or imagenet (ImageNet's, as IteRand's published code normalizes "
                                         "CIFAR-10; RGB sets held in memory)")
    epochs: int | None = _opt(20, "training epochs; null: the papers' recipe, 250 for mask search and 100 for dense "
                                  "(what the CIFAR configs use), 100 on resnet50 (ImageNet) [default: 20]")
    batch_size: int = _opt(64, "training batch size")
    eval_batch_size: int = _opt(1000, "evaluation batch size")
    optimizer: str = _opt("sgd", "sgd, adam or rmsprop (torch's defaults: alpha 0.99, no momentum; the SupSup recipes')")
    lr: float | None = _opt(None, "base learning rate (default: 0.1 for mask search, 0.01 for dense)")
    lr_scaling: str = _opt("none", "none: lr is the peak learning rate; linear: lr is per 256 images, and the peak is "
                                   "lr * batch_size / 256 (batch_size is the global batch, whatever the process count)")
    lr_schedule: str = _opt("cosine", "cosine, constant, exponential (lr * 0.9^(epoch / 10), the signed-supermask "
                                      "paper's decay) or multistep (lr / 10 after 80/150 and 120/150 of the epochs, "
                                      "Gem-Miner's fine-tuning); stepped per epoch")
    warmup_epochs: int = _opt(0, "epochs of linear learning-rate warm-up")
    momentum: float = _opt(0.9, "SGD momentum, in [0, 1)")
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(1e-4, "weight decay (on the scores in a mask search)")
    weight_decay_mode: str = _opt("coupled", "coupled (added to the gradient, as torch's SGD and Adam do) or decoupled "
                                             "(each step scales the trained tensors by 1 - weight_decay * lr / peak lr, "
                                             "not through the gradient: tfa's SGDW, as the signed-supermask paper "
                                             "trains)")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy loss")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N, mps")
    channels_last: bool = _opt(True, "keep conv activations channels-last (NHWC): same masks, faster convolutions")
    amp: bool = _opt(False, "mixed precision: float16 autocast with loss scaling on GPUs, bfloat16 on CPUs")
    threads: int | None = _opt(None, "torch CPU threads, at most the machine's cores (default: OMP_NUM_THREADS or the cores); masks are reproduced bit for bit only on the same thread count")
    compile: bool = _opt(False, "run the model through torch.compile (for GPUs; slower than eager on a 2-core CPU)")
    out_dir: str | None = _opt(None, "run directory (default: runs/<model>-<method>-p<prune_rate>-<time>)")
    max_steps: int | None = _opt(None, "stop training after this many optimizer steps: the epoch that reaches it ends "
                                       "there and is evaluated, and no later epoch runs (SupSup's iter_lim)")
    checkpoint_every_steps: int | None = _opt(None, "also checkpoint every N optimizer steps inside an epoch, so "
                                                    "--resume continues at the next unseen batch (off when unset)")
    logger: list[str] = _opt(None, "experiment trackers besides metrics.jsonl: tensorboard, wandb, mlflow (a list or comma-separated)")

    def __post_init__(self) -> None:
        for key in ("skip_layers", "skip_params", "include_params", "logger"):
            if getattr(self, key) is None:
                setattr(self, key, [])

    @property
    def masked(self) -> bool:
        return self.method in mask_methods()

    @property
    def label(self) -> str:
        """The method as the papers' tables name it: edge-popup, biprop, iterand, edge-popup+iwr, biprop+iwr, dense."""
        if self.iwr_every is not None:
            return f"{self.method}+iwr"
        if self.iterand_every_steps is not None or self.iterand_every_epochs is not None:
            return "iterand" if self.method == "edge-popup" else f"{self.method}+iterand"
        return self.method

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: lr, or lr scaled by batch_size / 256 under lr_scaling=linear."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(Config)}
# Every integer key's allowed range. Seeds are hashed (supermask.core.init.derive_seed) or fed to numpy's SeedSequence,
# which take any non-negative integer; the upper bound keeps every integer an int64, which torch, numpy, CSV
# readers and TensorBoard hold exactly.
INT64_MAX = 2**63 - 1
_ZERO_ALLOWED = ("weight_seed", "score_seed", "data_seed", "warmup_epochs", "iwr_warmup", "num_workers",
                 "finetune_epochs", "task", "holdout", "holdout_seed")
INT_RANGES = {name: (0 if name in _ZERO_ALLOWED else 1, INT64_MAX)
              for name, f in FIELDS.items() if str(f.type).startswith("int")}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def did_you_mean(value: Any, allowed) -> str:
    """' (did you mean 'x'?)' for the nearest allowed name, or ''."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; unreadable or binary files are a ConfigError naming the path."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}); is it the right file?") from None


def read_config_source(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a built-in config name or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path!r} not found; built-in configs: {', '.join(builtin_configs())}")
        return _read_yaml(read_text_file(path, "config file"), str(path))
    if name_or_path not in builtin_configs():
        raise ConfigError(f"unknown config {name_or_path!r}: expected a YAML file or one of "
                          f"{', '.join(builtin_configs())}{did_you_mean(name_or_path, builtin_configs())}")
    text = resources.files("supermask.run.configs").joinpath(f"{name_or_path}.yaml").read_text()
    return _read_yaml(text, f"built-in config {name_or_path}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings into a mapping; values are parsed as YAML scalars (0.9, true, [first, last]), and a
    value that is not valid YAML (`skip_layers=*`, a glob) is taken as the plain string it is."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        if not value.strip():  # `epochs=` silently meaning the default has cost users hours of CPU
            raise ConfigError(f"override {pair!r} has no value: give one (null for a key's automatic default)")
        try:
            out[key.strip()] = _read_yaml(f"v: {value}", f"override {pair!r}")["v"]
        except ConfigError:
            out[key.strip()] = value.strip()
    return out


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one value to its field's type, naming the key and value on error."""
    kind = str(FIELDS[name].type)
    if value is None:
        if "None" not in kind:
            raise ConfigError(f"{name} needs a value (a {kind}), got none")
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in _BOOL_WORDS:
                return _BOOL_WORDS[str(value).lower()]
            raise ValueError
        if kind.startswith("int"):
            number = _integer(value)
            low, high = INT_RANGES[name]
            if not low <= number <= high:  # named as given: 1e99 is clearer than its 100 digits
                raise ValueError(value)
            return number
        if kind.startswith("float"):
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            return float(value)
        if kind.startswith("list[float]"):
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, bool) or not math.isfinite(float(v)) for v in items):
                raise ValueError
            return [float(v) for v in items]
        if kind.startswith("list"):
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, (dict, list)) or v is None for v in items):
                raise ValueError
            return [str(v) for v in items]
        if kind.startswith("str"):
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        if kind.startswith("int"):
            raise ConfigError(_int_range_error(name, value)) from None
        what = "finite number" if kind.startswith("float") else kind.replace(" | None", "")
        raise ConfigError(f"{name}={value!r} is not a valid {what}") from None
    raise AssertionError(f"unhandled field type {kind}")


def _integer(value: Any) -> int:
    """An integer given as one (9223372036854775807, exactly), as a whole float (2.0) or as text of either ('1e9',
    which YAML 1.1 reads as a string); anything else raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(value)


def _int_range_error(name: str, value: Any) -> str:
    low, high = INT_RANGES[name]
    return f"{name}={value!r} must be an integer in [{low}, {high}]"


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}{did_you_mean(value, allowed)}")


def _apply_preset(cfg: Config, alias: str, explicit: set[str]) -> None:
    """Fill the paper's settings of a method shorthand into the keys not given explicitly. The epoch period
    and warm-up are scaled to the run's length (as iwr_every_fraction does), so a short run still recycles."""
    preset = paper_schedule(alias, cfg.model)
    length = preset.pop("epochs", paper_epochs(cfg.model))
    if cfg.epochs is None:  # null, the papers' recipe: the paper's run length for this shorthand
        cfg.epochs = length
    scale = cfg.epochs / length
    given = {"iwr_every": {"iwr_every", "iwr_every_fraction"},
             "iterand_every_steps": {"iterand_every_steps", "iterand_every_epochs"}}
    for key, value in preset.items():
        if given.get(key, {key}) & explicit:
            continue  # keys given explicitly win, and one period given replaces the preset's other one
        if key == "iwr_every":
            value = max(1, round(value * scale))
        elif key == "iwr_warmup":
            value = round(value * scale)
        setattr(cfg, key, value)


def make_config(source: str | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a Config from a built-in name / YAML path / mapping, then overrides."""
    raw: dict[str, Any] = {}
    if isinstance(source, str):
        raw.update(read_config_source(source))
    elif isinstance(source, dict):
        raw.update(source)
    elif source is not None:
        raise ConfigError(f"a config is a built-in name, a YAML file or a mapping of keys, not {source!r}")
    raw.update(overrides or {})
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}{did_you_mean(unknown[0], FIELDS)}: allowed keys are "
                          f"{', '.join(FIELDS)}")
    alias = raw.pop("method") if raw.get("method") in METHOD_ALIASES else None
    cfg = Config(**{k: _coerce(k, v) for k, v in raw.items()})
    if alias:
        _choice("model", cfg.model, list(MODELS))
        _apply_preset(cfg, alias, set(raw))
    return resolve(cfg)


# Keys added after runs were recorded without them: the value that reproduces what such a run did (today's
# default may differ: Biprop's published score gradient became the default after runs were made with the other).
RECORDED_BEFORE = {"biprop_grad": lambda raw: "alpha" if raw.get("method") == "biprop" else None}


def recorded_config(source: str | dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """A config as a run recorded it (its config.yaml path, or a mapping): a key it lacks takes the value the
    supermask that wrote it used, not today's default (`RECORDED_BEFORE`), so an old run reads as what it was."""
    raw = read_config_source(source) if isinstance(source, str) else dict(source)
    for key, then in RECORDED_BEFORE.items():
        if key not in raw:
            raw[key] = then(raw)
    return make_config(raw, overrides)


def resolve(cfg: Config) -> Config:
    """Validate every value and fill the method-dependent defaults."""
    for name, (low, high) in INT_RANGES.items():
        value = getattr(cfg, name)
        if value is not None and not (type(value) is int and low <= value <= high):
            raise ConfigError(_int_range_error(name, value))
    _choice("model", cfg.model, list(MODELS))
    _choice("method", cfg.method, method_names() + METHOD_ALIASES)
    if cfg.method in METHOD_ALIASES:
        raise ConfigError(f"method={cfg.method} is a shorthand: give it to make_config, or set method="
                          f"{paper_schedule(cfg.method, cfg.model)['method']} and the schedule keys")
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    _choice("lr_scaling", cfg.lr_scaling, ("none", "linear"))
    _choice("data_mode", cfg.data_mode, DATA_MODES)
    _check_dataset_name(cfg)
    if not 0.0 <= cfg.prune_rate < 1.0:
        raise ConfigError(f"prune_rate {cfg.prune_rate!r} is outside [0, 1): it is the fraction of weights removed")
    cfg.logger = list(dict.fromkeys(n.strip() for item in cfg.logger for n in item.split(",") if n.strip()))
    for name in cfg.logger:
        _choice("logger", name, TRACKERS)
    if cfg.weight_init is not None:
        _choice("weight_init", cfg.weight_init, WEIGHT_INITS + ("keep",))
    if not cfg.width > 0:
        raise ConfigError(f"width={cfg.width!r} must be > 0")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay={cfg.weight_decay!r} must be >= 0")
    # The velocity keeps a fraction `momentum` of itself each step: at 1 or above it never decays and the run diverges.
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum={cfg.momentum!r} is outside [0, 1)")
    if not 0 <= cfg.label_smoothing <= 1:
        raise ConfigError(f"label_smoothing={cfg.label_smoothing!r} is outside [0, 1]")
    if cfg.nesterov and cfg.optimizer == "sgd" and cfg.momentum == 0:
        raise ConfigError("nesterov=true needs momentum > 0 (momentum=0)")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr!r} must be > 0")
    if cfg.epochs is None:
        cfg.epochs = paper_epochs(cfg.model, cfg.masked)
    _resolve_schedules(cfg)
    if cfg.lr is None:
        cfg.lr = 0.1 if cfg.masked else 0.01
    if cfg.init_from is not None:
        if not cfg.masked:
            raise ConfigError(f"init_from needs a mask method (edge-popup or biprop), not method={cfg.method}")
        if not (Path(cfg.init_from) / CHECKPOINT).is_file():
            raise ConfigError(f"init_from {cfg.init_from!r} is not a run directory with a checkpoint.safetensors")
        _check_init_from(cfg)
        if cfg.weight_init not in (None, "keep"):
            raise ConfigError(f"init_from keeps the dense run's weights; weight_init={cfg.weight_init!r} contradicts it")
        cfg.weight_init = "keep"
    if source_size(cfg.weight_source) is not None and (not cfg.masked or cfg.weight_init == "keep"):
        has = "init_from's trained weights" if cfg.weight_init == "keep" else f"method={cfg.method}"
        raise ConfigError(f"weight_source={cfg.weight_source} draws the random weights of a mask search; {has} "
                          "draws none")
    weight_init, scale_fan = default_init(cfg.method)  # declared once, by the method
    if cfg.weight_init is None:
        cfg.weight_init = weight_init
    if cfg.scale_fan is None:
        cfg.scale_fan = scale_fan
    _choice("scale_fan_by", cfg.scale_fan_by, SCALE_FAN_BY)
    _choice("prune_scope", cfg.prune_scope, PRUNE_SCOPES)
    _choice("layer_streams", cfg.layer_streams, LAYER_STREAMS)
    _choice("layer_density", cfg.layer_density, LAYER_DENSITIES)
    if cfg.layer_density == "er":
        if cfg.method not in ("edge-popup", "biprop"):
            raise ConfigError(f"layer_density=er gives each layer its own top-k prune rate, for edge-popup and biprop "
                              f"(SupSup's masks), not method={cfg.method}")
        if cfg.prune_scope == "global":
            raise ConfigError("layer_density=er sets each layer's prune rate; prune_scope=global sets none: choose one")
        if cfg.prune_rate < 0.5:
            raise ConfigError(f"layer_density=er keeps at most half of each layer (SupSup's cap): prune_rate="
                              f"{cfg.prune_rate} asks for more; choose prune_rate >= 0.5")
    _choice("pruned_count", cfg.pruned_count, PRUNED_COUNTS)
    if cfg.pruned_count != "exact" and (cfg.method not in ("edge-popup", "biprop") or cfg.prune_scope == "global"):
        raise ConfigError(f"pruned_count={cfg.pruned_count} counts each layer's top-k as the published edge-popup, "
                          f"biprop and IteRand code does, not method={cfg.method} with prune_scope={cfg.prune_scope}")
    _choice("augment_crop", cfg.augment_crop, CROPS)
    _choice("normalization", cfg.normalization, NORMALIZATIONS)
    _choice("score_init", cfg.score_init, SCORE_INITS)
    if cfg.score_init != "method" and cfg.method not in ("edge-popup", "biprop"):
        raise ConfigError(f"score_init={cfg.score_init} draws edge-popup's and biprop's scores; method={cfg.method} "
                          "draws its own")
    _choice("score_rank", cfg.score_rank, SCORE_RANKS)
    if cfg.score_rank == "signed":
        if cfg.method != "edge-popup":
            raise ConfigError(f"score_rank=signed is edge-popup's mask over signed scores (IteRand's code), not "
                              f"method={cfg.method}'s")
        if cfg.prune_scope == "global" or cfg.iwr_every is not None or cfg.iwr_every_fraction is not None:
            raise ConfigError("score_rank=signed ranks each layer's signed scores; prune_scope=global and IWR rank "
                              "|scores|: choose one")
    if cfg.prune_scope == "global" and not cfg.masked:
        raise ConfigError(f"prune_scope=global chooses masks; method={cfg.method} has none")
    if cfg.prune_scope == "global" and cfg.compile:
        raise ConfigError("prune_scope=global selects every layer's mask at once, in Python, which compile=true "
                          "cannot trace: train it without compile")
    if cfg.scale_fan and cfg.masked and cfg.scale_fan_by == "pruned" and cfg.prune_rate == 0:
        raise ConfigError("scale_fan_by=pruned multiplies fan_in by the prune rate, and prune_rate=0 would make it 0; "
                          "use scale_fan_by=kept or scale_fan=false")
    if cfg.method == "biprop":
        _choice("biprop_grad", cfg.biprop_grad or "weight", BIPROP_GRADS)
        cfg.biprop_grad = cfg.biprop_grad or "weight"
        _choice("biprop_alpha_count", cfg.biprop_alpha_count or "exact", ALPHA_COUNTS)
        cfg.biprop_alpha_count = cfg.biprop_alpha_count or "exact"
    else:
        for key in ("biprop_grad", "biprop_alpha_count"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"{key}={getattr(cfg, key)!r} applies only to method=biprop, not method={cfg.method}")
    _check_gem_miner(cfg)
    if cfg.affine_bn and cfg.masked:
        raise ConfigError(f"affine_bn=true learns BatchNorm's scale and shift in a dense run; method={cfg.method} "
                          "searches a mask over random weights with non-affine BatchNorm, as the published code does")
    if cfg.finetune_epochs and (not cfg.masked or get_method(cfg.method).finetune_start is None):
        raise ConfigError(f"finetune_epochs={cfg.finetune_epochs} trains a found network's weights after the search; "
                          f"method={cfg.method} has no such stage (gem-miner has)")
    if not cfg.finetune_lr > 0 or cfg.finetune_weight_decay < 0:
        raise ConfigError(f"finetune_lr={cfg.finetune_lr!r} must be > 0 and finetune_weight_decay="
                          f"{cfg.finetune_weight_decay!r} >= 0")
    _check_multicoat(cfg)
    _check_tasks(cfg)
    if cfg.method == "threshold" and cfg.prune_scope == "global":
        raise ConfigError("method=threshold keeps the weights of non-negative score, not a top-k; leave prune_scope at layer")
    _choice("weight_decay_mode", cfg.weight_decay_mode, WEIGHT_DECAY_MODES)
    if cfg.method == "signed-supermask":
        cfg.signed_threshold = 0.4 if cfg.signed_threshold is None else cfg.signed_threshold
        if not 0 <= cfg.signed_threshold < 1:
            raise ConfigError(f"signed_threshold={cfg.signed_threshold!r} must be in [0, 1): a fraction of the largest "
                              "initial |score|")
        if cfg.prune_scope == "global":
            raise ConfigError("method=signed-supermask masks by a threshold, not a top-k; leave prune_scope at layer")
    elif cfg.signed_threshold is not None:
        raise ConfigError(f"signed_threshold={cfg.signed_threshold!r} applies only to method=signed-supermask, not "
                          f"method={cfg.method}")
    return cfg


WEIGHT_DECAY_MODES = ("coupled", "decoupled")
OPTIMIZERS = ("sgd", "adam", "rmsprop")


def _check_tasks(cfg: Config) -> None:
    """task_stream names its dataset; tasks= (a run of many tasks) and task= (one task's run) exclude each other.
    tasks= without a task_stream is a stream of the user's own datasets, given in Python (`train_tasks(stream=)`)."""
    from supermask.data.base import _NUM_CLASSES
    from supermask.data.task_streams import BASE_DATASET, TASK_STREAMS, stream_length

    if cfg.tasks is not None and cfg.task is not None:
        raise ConfigError(f"tasks={cfg.tasks} trains a stream of tasks and task={cfg.task} one task of it: set one")
    if cfg.task_stream is None:
        if cfg.task is not None:
            raise ConfigError(f"task={cfg.task} is a task of a task_stream: set task_stream= "
                              f"({', '.join(TASK_STREAMS)})")
        return
    _choice("task_stream", cfg.task_stream, TASK_STREAMS)
    base = BASE_DATASET[cfg.task_stream]
    if cfg.dataset.strip().lower() != base:
        raise ConfigError(f"task_stream={cfg.task_stream} is made of {base}, not dataset={cfg.dataset}: set dataset={base}")
    length = stream_length(cfg.task_stream, _NUM_CLASSES.get(base, 0))
    for key in ("tasks", "task"):
        value = getattr(cfg, key)
        count = value if key == "tasks" else (value + 1 if value is not None else None)
        if length is not None and count is not None and count > length:
            raise ConfigError(f"{key}={value} is beyond task_stream={cfg.task_stream}, which has {length} tasks "
                              f"(0 to {length - 1})")
LR_SCHEDULES = ("cosine", "constant", "exponential", "multistep")


def _check_multicoat(cfg: Config) -> None:
    """multicoat_prune_rates: for multicoat only, starting at prune_rate; the published coats at prune_rate 0.7."""
    if cfg.method != "multicoat":
        for key in ("multicoat_prune_rates", "multicoat_scale"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"{key}={getattr(cfg, key)} applies only to method=multicoat, not method={cfg.method}")
        return
    from supermask.core.multicoat import PUBLISHED_RATES, SCALES, check_rates

    cfg.multicoat_scale = cfg.multicoat_scale or "published"
    _choice("multicoat_scale", cfg.multicoat_scale, SCALES)

    if cfg.multicoat_prune_rates is None:
        if cfg.prune_rate != PUBLISHED_RATES[0]:
            raise ConfigError(f"method=multicoat needs its coats: multicoat_prune_rates=[{cfg.prune_rate:g}, ...] (the "
                              f"prune fractions of coats 1 to C, increasing; the published ones are "
                              f"{list(PUBLISHED_RATES)} at prune_rate={PUBLISHED_RATES[0]})")
        cfg.multicoat_prune_rates = list(PUBLISHED_RATES)
    check_rates(cfg.prune_rate, cfg.multicoat_prune_rates)
    if cfg.prune_scope == "global":
        raise ConfigError("method=multicoat selects each layer's coats by its own top-k; leave prune_scope at layer")


GEM_DEFAULTS = {"gem_period": 5, "gem_lambda": 1e-4, "gem_rounding": "exact"}


def _check_gem_miner(cfg: Config) -> None:
    """Gem-Miner's keys: filled with their defaults for gem-miner, refused for any other method."""
    if cfg.method != "gem-miner":
        given = [f"{k}={getattr(cfg, k)!r}" for k in GEM_DEFAULTS if getattr(cfg, k) is not None]
        if given:
            raise ConfigError(f"{given[0]} applies only to method=gem-miner, not method={cfg.method}")
        return
    for key, value in GEM_DEFAULTS.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    from supermask.core.gem_miner import ROUNDINGS

    _choice("gem_rounding", cfg.gem_rounding, ROUNDINGS)
    if cfg.gem_lambda < 0:
        raise ConfigError(f"gem_lambda={cfg.gem_lambda!r} must be >= 0")
    if cfg.prune_scope == "global":
        raise ConfigError("method=gem-miner prunes over all masked layers together already (its rounds are global); "
                          "leave prune_scope at layer")



def _check_init_from(cfg: Config) -> None:
    """init_from takes a dense run's trained weights: refuse a mask-search run (whose checkpoint holds scores, not
    weights) or another architecture by its config.yaml, rather than by the tensor names that would not match."""
    source = Path(cfg.init_from) / CONFIG_FILE
    if not source.is_file():
        return  # the checkpoint, loaded later, says whether it fits
    raw = read_config_source(str(source))
    if raw.get("method") != "dense":
        raise ConfigError(f"init_from {cfg.init_from!r} is a method={raw.get('method')} run: init_from needs a dense "
                          f"run (method=dense) of the same model and width")
    for key in ("model", "width"):
        if raw.get(key) != getattr(cfg, key):
            raise ConfigError(f"init_from {cfg.init_from!r} is a {key}={raw.get(key)} run and this run has {key}="
                              f"{getattr(cfg, key)}: init_from needs a dense run of the same model and width")
    if raw.get("affine_bn"):
        raise ConfigError(f"init_from {cfg.init_from!r} learned BatchNorm's scale and shift (affine_bn=true), which a "
                          "mask search's non-affine BatchNorm has no place for: use a dense run without affine_bn")


def _check_dataset_name(cfg: Config) -> None:
    """Refuse a near-miss of a dataset name (cifar1, mnsit) that is not a path either, suggesting the name; other
    paths are checked when the data is loaded."""
    name = cfg.dataset.strip()
    hint = did_you_mean(name.lower(), DATASET_NAMES)
    if name.lower() in DATASET_NAMES or not hint or looks_like_path(name):
        return
    roots = (Path.cwd(), Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir())
    if not any(root is not None and (root / Path(name).expanduser()).exists() for root in roots):
        raise ConfigError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)} or a path to an "
                          f"image folder / .tar.gz{hint}")


def _resolve_schedules(cfg: Config) -> None:
    scheduled = [k for k in ("iwr_every", "iwr_every_fraction", "iterand_every_steps", "iterand_every_epochs")
                 if getattr(cfg, k) is not None]
    if scheduled and not cfg.masked:
        raise ConfigError(f"{scheduled[0]} needs a mask method (edge-popup or biprop), not method={cfg.method}")
    if cfg.iwr_every_fraction is not None:
        if not 0 < cfg.iwr_every_fraction <= 1:
            raise ConfigError(f"iwr_every_fraction={cfg.iwr_every_fraction!r} must be in (0, 1]")
        if cfg.iwr_every is not None:
            raise ConfigError("set iwr_every or iwr_every_fraction, not both")
        cfg.iwr_every = max(1, round(cfg.iwr_every_fraction * cfg.epochs))
        cfg.iwr_every_fraction = None  # resolved into iwr_every, so a resumed run compares equal
    if cfg.iterand_every_steps is not None and cfg.iterand_every_epochs is not None:
        raise ConfigError("set iterand_every_steps or iterand_every_epochs, not both")
    if not 0 <= cfg.iwr_rate <= 0.5:
        raise ConfigError(f"iwr_rate={cfg.iwr_rate!r} is outside [0, 0.5]")
    _choice("iterand_timing", cfg.iterand_timing, ("after", "before"))
    _choice("iterand_redraw", cfg.iterand_redraw, ITERAND_REDRAWS)
    if not 0 <= cfg.iterand_rate <= 1:
        raise ConfigError(f"iterand_rate={cfg.iterand_rate!r} is outside [0, 1]")


def config_help() -> str:
    """One line per config key, for `--help`."""
    lines = []
    for f in fields(Config):
        text = f.metadata["help"]
        if "default" not in text:
            listed = f.default is None and str(f.type).startswith("list")  # __post_init__ makes None an empty list
            text += f" [default: {[] if listed else f.default}]"
        lines.append(f"  {f.name:<16} {text}")
    return "\n".join(lines)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
