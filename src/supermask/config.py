"""The run configuration: one typed dataclass, loaded from YAML plus `key=value` overrides, validated once.

Fields left as None take the paper's recipe for the chosen method when the config is resolved, and the resolved
values are what a run records in its config.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .init import WEIGHT_INITS
from .methods import MASK_METHODS, METHODS
from .models import MODELS


# Method names of the papers' tables that are a base method plus a schedule, with the paper's settings.
METHOD_ALIASES = ("edge-popup+iwr", "biprop+iwr", "iterand")


def _opt(default: Any, help: str, **kw) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class Config:
    model: str = _opt("conv4", f"architecture: {', '.join(MODELS)}")
    width: float = _opt(1.0, "width multiplier of every hidden layer")
    method: str = _opt("edge-popup", f"{', '.join(METHODS)}; or {', '.join(METHOD_ALIASES)} (a base method plus the paper's schedule)")
    prune_rate: float = _opt(0.5, "fraction of each layer's weights REMOVED, in [0, 1)")
    weight_init: str | None = _opt(None, f"{', '.join(WEIGHT_INITS)} (default: signed-constant for edge-popup, kaiming-normal otherwise)")
    scale_fan: bool | None = _opt(None, "divide fan_in by the keep fraction in the weight init (default: true for biprop)")
    skip_layers: list[str] = _opt(None, "layers left dense: qualified names, glob patterns, 'first', 'last'", )
    iwr_every: int | None = _opt(None, "IWR: recycle every F epochs (off when unset)")
    iwr_every_fraction: float | None = _opt(None, "IWR: F as a fraction of the epochs, for short runs (F = max(1, round(f * epochs)))")
    iwr_rate: float = _opt(0.1, "IWR: fraction r of each layer's weights overwritten per step, in [0, 0.5]")
    iwr_warmup: int = _opt(0, "IWR: no recycling until after epoch E0")
    iwr_ablation: bool = _opt(False, "IWR ablation: copy from the ranks [n, 2n) from the bottom instead of the top")
    iterand_every_steps: int | None = _opt(None, "IteRand: redraw pruned weights every K optimizer steps (off when unset)")
    iterand_every_epochs: int | None = _opt(None, "IteRand: redraw every F epochs instead (off when unset)")
    iterand_rate: float = _opt(0.1, "IteRand: probability r that a pruned weight is redrawn")
    init_from: str | None = _opt(None, "a dense run directory: search masks over its trained weights instead of random ones")
    weight_seed: int = _opt(0, "seed of the random weights")
    score_seed: int = _opt(0, "seed of the initial scores")
    data_seed: int = _opt(0, "seed of the data order and augmentation")
    dataset: str = _opt("cifar10", "digits, mnist, cifar10, cifar100, listops (token sequences), or a path to an image folder / .tar.gz")
    data_dir: str | None = _opt(None, "folder holding the datasets (default: $SUPERMASK_DATA)")
    augment: bool | None = _opt(None, "random crop (pad 4) + horizontal flip (default: on for 32-pixel images)")
    epochs: int | None = _opt(None, "training epochs (default: 250 for mask search, 100 for dense)")
    batch_size: int = _opt(128, "training batch size")
    eval_batch_size: int = _opt(1000, "evaluation batch size")
    optimizer: str = _opt("sgd", "sgd or adam")
    lr: float | None = _opt(None, "base learning rate (default: 0.1 for mask search, 0.01 for dense)")
    lr_schedule: str = _opt("cosine", "cosine or constant (stepped per epoch)")
    warmup_epochs: int = _opt(0, "epochs of linear learning-rate warm-up")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(1e-4, "weight decay (on the scores in a mask search)")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy loss")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N, mps")
    channels_last: bool = _opt(True, "keep conv activations channels-last (NHWC): same masks, faster convolutions")
    amp: bool = _opt(False, "mixed precision: float16 autocast with loss scaling on GPUs, bfloat16 on CPUs")
    compile: bool = _opt(False, "run the model through torch.compile (for GPUs; slower than eager on a 2-core CPU)")
    out_dir: str | None = _opt(None, "run directory (default: runs/<model>-<method>-p<prune_rate>-<time>)")

    def __post_init__(self) -> None:
        if self.skip_layers is None:
            self.skip_layers = []

    @property
    def masked(self) -> bool:
        return self.method in MASK_METHODS

    @property
    def label(self) -> str:
        """The method as the papers' tables name it: edge-popup, biprop, iterand, edge-popup+iwr, biprop+iwr, dense."""
        if self.iwr_every is not None:
            return f"{self.method}+iwr"
        if self.iterand_every_steps is not None or self.iterand_every_epochs is not None:
            return "iterand" if self.method == "edge-popup" else f"{self.method}+iterand"
        return self.method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(Config)}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def builtin_configs() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("supermask.configs").iterdir() if p.name.endswith(".yaml"))


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


def read_config_source(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a built-in config name or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path!r} not found; built-in configs: {', '.join(builtin_configs())}")
        return _read_yaml(path.read_text(), str(path))
    if name_or_path not in builtin_configs():
        raise ConfigError(f"unknown config {name_or_path!r}: expected a YAML file or one of {', '.join(builtin_configs())}")
    text = resources.files("supermask.configs").joinpath(f"{name_or_path}.yaml").read_text()
    return _read_yaml(text, f"built-in config {name_or_path}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings into a mapping; values are parsed as YAML scalars (0.9, true, [first, last])."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        out[key.strip()] = _read_yaml(f"v: {value}", f"override {pair!r}")["v"] if value.strip() else None
    return out


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one value to its field's type, naming the key and value on error."""
    if value is None:
        return None
    kind = str(FIELDS[name].type)
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in _BOOL_WORDS:
                return _BOOL_WORDS[str(value).lower()]
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("list"):
            items = value if isinstance(value, list) else [value]
            return [str(v) for v in items]
        if kind.startswith("str"):
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {kind.replace(' | None', '')}") from None
    raise AssertionError(f"unhandled field type {kind}")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")


def paper_schedule(alias: str, model: str) -> dict[str, Any]:
    """The schedule settings the IWR paper used for `alias` on `model` (CIFAR-10, 250 epochs)."""
    if alias == "edge-popup+iwr":
        wide = model in ("conv6", "resnet18")
        return {"method": "edge-popup", "iwr_every": 10 if wide else 3, "iwr_rate": 0.2 if wide else 0.1}
    if alias == "biprop+iwr":
        out: dict[str, Any] = {"method": "biprop", "iwr_every": 10, "iwr_rate": 0.2}
        if model == "resnet18":
            out.update(iwr_warmup=50, epochs=200)
        return out
    if alias == "iterand":
        return {"method": "edge-popup", "iterand_every_steps": 300, "iterand_rate": 0.1}
    raise AssertionError(alias)


def make_config(source: str | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a Config from a built-in name / YAML path / mapping, then overrides."""
    raw: dict[str, Any] = {}
    if isinstance(source, str):
        raw.update(read_config_source(source))
    elif source:
        raw.update(source)
    raw.update(overrides or {})
    if raw.get("method") in METHOD_ALIASES:
        # The alias fills in the paper's schedule; keys given explicitly (in the file or as overrides) still win.
        alias = raw.pop("method")
        schedule = paper_schedule(alias, str(raw.get("model", Config.model)))
        if raw.get("iwr_every_fraction") is not None:  # a period given as a fraction replaces the paper's F
            schedule.pop("iwr_every", None)
        raw = {**schedule, **raw}
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}: allowed keys are {', '.join(FIELDS)}")
    return resolve(Config(**{k: _coerce(k, v) for k, v in raw.items()}))


def resolve(cfg: Config) -> Config:
    """Validate every value and fill the method-dependent defaults."""
    _choice("model", cfg.model, list(MODELS))
    _choice("method", cfg.method, METHODS)
    _choice("optimizer", cfg.optimizer, ("sgd", "adam"))
    _choice("lr_schedule", cfg.lr_schedule, ("cosine", "constant"))
    if not 0.0 <= cfg.prune_rate < 1.0:
        raise ConfigError(f"prune_rate {cfg.prune_rate!r} is outside [0, 1): it is the fraction of weights removed")
    if cfg.weight_init is not None:
        _choice("weight_init", cfg.weight_init, WEIGHT_INITS + ("keep",))
    for name in ("width", "batch_size", "eval_batch_size"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} must be > 0")
    for name in ("momentum", "weight_decay", "label_smoothing", "warmup_epochs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr!r} must be > 0")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"epochs={cfg.epochs!r} must be >= 1")
    if cfg.epochs is None:
        cfg.epochs = 250 if cfg.masked else 100
    _resolve_schedules(cfg)
    if cfg.lr is None:
        cfg.lr = 0.1 if cfg.masked else 0.01
    if cfg.init_from is not None:
        if not cfg.masked:
            raise ConfigError(f"init_from needs a mask method (edge-popup or biprop), not method={cfg.method}")
        if not (Path(cfg.init_from) / "checkpoint.safetensors").is_file():
            raise ConfigError(f"init_from {cfg.init_from!r} is not a run directory with a checkpoint.safetensors")
        if cfg.weight_init not in (None, "keep"):
            raise ConfigError(f"init_from keeps the dense run's weights; weight_init={cfg.weight_init!r} contradicts it")
        cfg.weight_init = "keep"
    if cfg.weight_init is None:
        cfg.weight_init = "signed-constant" if cfg.method == "edge-popup" else "kaiming-normal"
    if cfg.scale_fan is None:
        cfg.scale_fan = cfg.method == "biprop"
    return cfg


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
    for name in ("iwr_every", "iterand_every_steps", "iterand_every_epochs"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} must be >= 1")
    if cfg.iterand_every_steps is not None and cfg.iterand_every_epochs is not None:
        raise ConfigError("set iterand_every_steps or iterand_every_epochs, not both")
    if not 0 <= cfg.iwr_rate <= 0.5:
        raise ConfigError(f"iwr_rate={cfg.iwr_rate!r} is outside [0, 0.5]")
    if not 0 <= cfg.iterand_rate <= 1:
        raise ConfigError(f"iterand_rate={cfg.iterand_rate!r} is outside [0, 1]")
    if cfg.iwr_warmup < 0:
        raise ConfigError(f"iwr_warmup={cfg.iwr_warmup!r} must be >= 0")


def config_help() -> str:
    """One line per config key, for `--help`."""
    lines = []
    for f in fields(Config):
        text = f.metadata["help"]
        if "default" not in text:
            text += f" [default: {f.default}]"
        lines.append(f"  {f.name:<16} {text}")
    return "\n".join(lines)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
