"""A found network as a few kilobytes: the seeds, the masks as near-entropy codes, and only what a seed cannot
give back. `export_run` writes a `.smask` file; `load` rebuilds an ordinary `nn.Module` from it.

File layout (docs/smask-format.md has the full description):

    b"SMASK\\x00\\r\\n"  u32 format version  u32 header length  header (UTF-8 JSON)  payload  sha256(all before)

The header describes the architecture, method, seeds and init, and where each blob of the payload is: each
masked layer's mask (see `supermask.codec`), its Biprop alpha, the kept weights whose value no longer equals
the seed's (after IWR or IteRand) with their new values, and every other tensor of the model (BatchNorm
statistics, biases, layers left dense) as raw little-endian float32. The checksum is verified before anything
is parsed; then the header must conform to `HEADER` (a small declarative schema), and every name, shape, count
and blob range is checked against the rebuilt architecture before any mask is decoded or weight assembled.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import codec
from .checkpoint import atomic_write_bytes, load_checkpoint, read_json
from .config import make_config, recorded_config
from .convert import convert, masked_layers, random_weight, weight_tensors
from .errors import ConfigError
from .mask import num_pruned
from .methods import biprop_alpha
from .models import MODELS, TOKEN_MODELS, build_model

MAGIC = b"SMASK\x00\r\n"
VERSION = 1
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
MAX_HEADER = 1 << 24
MAX_ELEMENTS = 1 << 28  # parameters a .smask file may describe (1 GiB of float32)


# The config keys that, with the input shape, rebuild a run's network from its seed.
REBUILD_KEYS = ("model", "width", "method", "prune_rate", "weight_init", "scale_fan", "weight_seed", "skip_layers")
OPTIONAL_REBUILD_KEYS = ("skip_params", "include_params")  # absent from files written before they existed


@dataclass(frozen=True)
class _Kind:
    """A kind of JSON value in the header: what it must be (for the error) and the test."""

    what: str
    ok: Callable[[Any], bool]


TEXT = _Kind("a string", lambda v: isinstance(v, str))
INT = _Kind("an integer", lambda v: type(v) is int)
COUNT = _Kind("a non-negative integer", lambda v: type(v) is int and v >= 0)
NUMBER = _Kind("a finite number", lambda v: type(v) in (int, float) and math.isfinite(v))
FLAG = _Kind("true or false", lambda v: type(v) is bool)
SHAPE = _Kind("a list of sizes", lambda v: type(v) is list and all(type(x) is int and x >= 0 for x in v))
SPAN = _Kind("[offset, length] in the payload", lambda v: SHAPE.ok(v) and len(v) == 2)
NAMES = _Kind("a list of strings", lambda v: type(v) is list and all(isinstance(x, str) for x in v))
ACCURACY = _Kind("a number or null", lambda v: v is None or NUMBER.ok(v))

# The header's schema: a dict is an object (a key ending in "?" is optional, no other key is allowed), a one-item
# list a list of that kind. docs/smask-format.md describes each field.
LAYER = {"name": TEXT, "shape": SHAPE, "kept": COUNT, "mask": SPAN, "alpha?": NUMBER, "changed?": SPAN,
         "changed_values?": SPAN}
TENSOR = {"key": TEXT, "shape": SHAPE, "dtype": TEXT, "data": SPAN}
HEADER = {"format": TEXT, "version": COUNT, "model": TEXT, "width": NUMBER, "num_classes": COUNT,
          "in_channels": COUNT, "image_size": COUNT, "method": TEXT, "label": TEXT, "prune_rate": NUMBER,
          "weight_init": TEXT, "scale_fan": FLAG, "weight_seed": INT, "skip_layers": NAMES, "skip_params?": NAMES,
          "include_params?": NAMES, "channels_last?": FLAG,
          "dataset": TEXT, "dataset_sha256?": TEXT, "data_mode?": TEXT, "test_acc": ACCURACY, "layers": [LAYER],
          "tensors": [TENSOR],
          "payload_length": COUNT}


def _conform(value: Any, kind: Any, at: str) -> None:
    """Raise ConfigError at the first place where `value` does not have the schema `kind`."""
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{at} must be an object, not {_brief(value)}")
        fields = {k.rstrip("?"): (k.endswith("?"), sub) for k, sub in kind.items()}
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise ConfigError(f"{at} has an unknown field {unknown[0]!r}")
        for key, (optional, sub) in fields.items():
            if key in value:
                _conform(value[key], sub, f"{at}.{key}")
            elif not optional:
                raise ConfigError(f"{at} lacks the field {key!r}")
    elif isinstance(kind, list):
        if not isinstance(value, list):
            raise ConfigError(f"{at} must be a list, not {_brief(value)}")
        for i, item in enumerate(value):
            _conform(item, kind[0], f"{at}[{i}]")
    elif not kind.ok(value):
        raise ConfigError(f"{at} must be {kind.what}, not {_brief(value)}")


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _architecture(header: dict) -> nn.Module:
    return build_model(header["model"], num_classes=header["num_classes"], in_channels=header["in_channels"],
                       image_size=header["image_size"], width=header["width"])


def _skeleton(header: dict) -> nn.Module:
    """The architecture with the seed's random weights, converted as the run was (scores are irrelevant), in the
    run's memory layout: float sums (Biprop's alpha, a conv's) depend on it, and the rebuild must equal the run."""
    model = convert(_architecture(header), header["method"], header["prune_rate"], weight_init=header["weight_init"],
                    scale_fan=header["scale_fan"], weight_seed=header["weight_seed"],
                    skip=header["skip_layers"] + header.get("skip_params", []), include=header.get("include_params", []))
    return model.to(memory_format=torch.channels_last) if header.get("channels_last") else model


def _bits_like(weight: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    """A decoded flat mask as a bool tensor of the weight's shape and memory layout."""
    return torch.empty_like(weight, dtype=torch.bool).copy_(torch.from_numpy(bits).view(weight.shape))


def export_run(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the finished run in `run_dir` as a `.smask` file; returns a size report."""
    run_dir = Path(run_dir)
    check_output(path, "the .smask file")
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
    summary = read_json(summary_file)
    cfg = recorded_config(str(run_dir / "config.yaml"))
    if not cfg.masked:
        raise ConfigError(f"{run_dir} is a dense run: there is no mask to export")
    if cfg.weight_init == "keep":
        raise ConfigError(f"{run_dir} searched masks over weights it was given (weight_init=keep): no seed rebuilds them")
    header: dict[str, Any] = {
        "format": "supermask", "version": VERSION,
        **{k: v for k, v in cfg.to_dict().items() if k in REBUILD_KEYS + ("dataset", "channels_last")},
        **{k: v for k, v in cfg.to_dict().items() if k in OPTIONAL_REBUILD_KEYS and v},
        "label": cfg.label, "test_acc": summary.get("test_acc"),
    }
    if isinstance(summary.get("dataset_sha256"), str):
        header["dataset_sha256"] = summary["dataset_sha256"]
    if summary.get("data_mode") == "stream":  # eval reads it streamed again (files of sets in memory stay as they were)
        header["data_mode"] = "stream"
    shape_keys = ("num_classes", "in_channels", "image_size")
    if all(k in summary for k in shape_keys):
        header.update({k: summary[k] for k in shape_keys})
    else:  # runs written before summaries recorded the input shape: read it off the dataset
        from .data import load_dataset

        ds = load_dataset(cfg.dataset, cfg.data_dir)
        header.update(num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size)
    trained = _skeleton(header)
    load_checkpoint(run_dir / "checkpoint.safetensors", trained)
    seeded = _skeleton(header)
    seeded_weights = {name: random_weight(layer, p) for name, layer, p in masked_layers(seeded)}

    payload = bytearray()

    def put(data: bytes) -> list[int]:
        payload.extend(data)
        return [len(payload) - len(data), len(data)]

    layers, mask_bytes, entropy = [], 0, 0.0
    for name, layer, p in masked_layers(trained):
        mask = p.mask().cpu()
        weight = random_weight(layer, p).detach().cpu()
        changed = mask & (weight != seeded_weights[name])
        blob = codec.encode(mask.numpy())
        entry = {"name": name, "shape": list(weight.shape), "kept": int(mask.sum()), "mask": put(blob)}
        mask_bytes += len(blob)
        entropy += codec.entropy_bits(mask.numel(), int(mask.sum())) / 8
        if changed.any():
            entry["changed"] = put(codec.encode(changed.numpy()))
            entry["changed_values"] = put(weight[changed].to(torch.float32).numpy().astype("<f4").tobytes())
        if header["method"] == "biprop":
            entry["alpha"] = float(biprop_alpha(weight, mask))
        layers.append(entry)
    others = []
    for key, tensor in _other_tensors(trained).items():
        t = tensor.detach().cpu().contiguous()
        others.append({"key": key, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                       "data": put(t.numpy().tobytes())})
    header.update(layers=layers, tensors=others, payload_length=len(payload))
    head = json.dumps(header, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, VERSION, len(head)) + head + bytes(payload)
    data = body + hashlib.sha256(body).digest()
    atomic_write_bytes(path, data)
    dense_bytes = 4 * sum(w.numel() for w in weight_tensors(trained).values())
    heads = codec.HEAD_BYTES * len(layers)  # the codes alone come within ~1.5% of the bound; each blob adds its head
    return {"file": str(path), "bytes": len(data), "mask_bytes": mask_bytes, "entropy_bytes": round(entropy, 1),
            "mask_vs_entropy": round(mask_bytes / entropy, 4) if entropy else None, "mask_layers": len(layers),
            "mask_head_bytes": heads, "codes_vs_entropy": round((mask_bytes - heads) / entropy, 4) if entropy else None,
            "overhead_bytes": len(data) - mask_bytes, "dense_float32_bytes": dense_bytes,
            "compression": round(dense_bytes / len(data), 1)}


def _other_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the state that the seed, the masks and the changes do not rebuild: what a file stores
    (every parametrization is convert's, so a masked weight)."""
    return {key: t for key, t in model.state_dict().items() if ".parametrizations." not in f".{key}"}


def check_output(path: str | Path, what: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a directory, or one in a missing folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name, such as {path / 'net.smask'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{what} {path} cannot be written: the folder {path.parent} does not exist")


def read(path: str | Path) -> tuple[dict[str, Any], memoryview]:
    """(header, payload) of a `.smask` file, after checking magic, length, checksum and version."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < _PREFIX.size + _DIGEST or not data.startswith(MAGIC):
        raise ConfigError(f"{path} is not a .smask file (bad magic or too short)")
    _, version, head_len = _PREFIX.unpack_from(data)
    # the checksum first: a damaged version field is damage, not another version
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ConfigError(f"{path} is corrupt: its checksum does not match (truncated or modified)")
    if version != VERSION:
        raise ConfigError(f"{path} is .smask format version {version}; this supermask reads version {VERSION}")
    if head_len > min(MAX_HEADER, len(data) - _PREFIX.size - _DIGEST):
        raise ConfigError(f"{path} has an impossible header length {head_len}")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + head_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} has an unreadable header ({e})") from None
    payload = memoryview(data)[_PREFIX.size + head_len: len(data) - _DIGEST]
    if not isinstance(header, dict) or header.get("payload_length") != len(payload):
        raise ConfigError(f"{path} has a header that does not match its payload")
    return header, payload


def _blob(payload: memoryview, span: list[int]) -> bytes:
    return bytes(payload[span[0]:span[0] + span[1]])


def _build(header: dict, where: str) -> nn.Module:
    """The skeleton a conforming header describes, after its values are validated and its size is bounded."""
    if header["format"] != "supermask" or header["version"] != VERSION:
        raise ConfigError(f"{where}: header says format {header['format']!r} version {header['version']}, "
                          f"not supermask version {VERSION}")
    if header["model"] not in MODELS:
        raise ConfigError(f"{where}: unknown architecture {header['model']!r}")
    try:
        make_config(None, {k: header[k] for k in REBUILD_KEYS + tuple(k for k in OPTIONAL_REBUILD_KEYS if k in header)})
        for key in ("num_classes", "in_channels", "image_size"):
            if not 0 < header[key] < 1 << 20:
                raise ConfigError(f"{where}: bad {key} {header[key]!r}")
        with torch.device("meta"):  # count the parameters before allocating any
            probe = _architecture(header)
        if sum(p.numel() for p in probe.parameters()) > MAX_ELEMENTS:
            raise ConfigError(f"{where}: describes a network of more than {MAX_ELEMENTS:,} parameters")
        return _skeleton(header)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: header does not describe a supermask network ({e})") from None


def _same_names(names: list[str], expected: Any, what: str, where: str) -> None:
    """`names` must be exactly the keys of `expected`, each once."""
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    missing, unexpected = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    if repeated or missing or unexpected:
        problems = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected), ("repeated", repeated))
                    if items]
        raise ConfigError(f"{where}: its {what} do not match the architecture ({'; '.join(problems)})")


def _validate(header: dict, payload: memoryview, model: nn.Module, where: str) -> None:
    """Every entry against the rebuilt architecture: names, shapes, dtypes, kept counts and blob ranges."""
    layers = {name: (layer, p) for name, layer, p in masked_layers(model)}
    tensors = _other_tensors(model)
    _same_names([e["name"] for e in header["layers"]], layers, "masked layers", where)
    _same_names([t["key"] for t in header["tensors"]], tensors, "stored tensors", where)
    spans = []
    for e in header["layers"]:
        layer, p = layers[e["name"]]
        shape, what = list(random_weight(layer, p).shape), f"{where}: layer {e['name']}"
        if e["shape"] != shape:
            raise ConfigError(f"{what} has shape {e['shape']}, the architecture {shape}")
        n = random_weight(layer, p).numel()
        if e["kept"] != n - num_pruned(n, p.prune_rate):  # every masked layer prunes exactly floor(p n)
            raise ConfigError(f"{what} keeps {e['kept']} weights; prune_rate {header['prune_rate']} keeps "
                              f"{n - num_pruned(n, p.prune_rate)} of {n}")
        if ("changed" in e) != ("changed_values" in e) or ("alpha" in e) != (header["method"] == "biprop"):
            raise ConfigError(f"{what} has an inconsistent set of fields {sorted(e)}")
        spans += [(what, e[k]) for k in ("mask", "changed", "changed_values") if k in e]
    for t in header["tensors"]:
        own, what = tensors[t["key"]], f"{where}: tensor {t['key']}"
        if t["shape"] != list(own.shape) or t["dtype"] != str(own.dtype).replace("torch.", ""):
            raise ConfigError(f"{what} is {t['dtype']} {t['shape']}, the architecture "
                              f"{str(own.dtype).replace('torch.', '')} {list(own.shape)}")
        if t["data"][1] != own.numel() * own.element_size():
            raise ConfigError(f"{what} has the wrong length {t['data'][1]}")
        spans.append((what, t["data"]))
    for what, (offset, length) in spans:
        if offset + length > len(payload):
            raise ConfigError(f"{what}: blob range {[offset, length]} is outside the payload")


def load(path: str | Path) -> nn.Module:
    """Rebuild the network of a `.smask` file as an ordinary module (plain Conv/Linear weights), in eval mode and
    in the memory layout the run computed in, so its outputs equal the run's exactly."""
    header, payload = read(path)
    where = str(path)
    _conform(header, HEADER, f"{where}: header")
    model = _build(header, where)
    _validate(header, payload, model, where)
    layers = {name: (layer, p) for name, layer, p in masked_layers(model)}
    plain: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    with torch.no_grad():
        for e in header["layers"]:
            layer, p = layers[e["name"]]
            weight = random_weight(layer, p)
            n = weight.numel()
            mask = _bits_like(weight, codec.decode(_blob(payload, e["mask"]), n))
            if int(mask.sum()) != e["kept"]:
                raise ConfigError(f"{where}: layer {e['name']}'s mask keeps {int(mask.sum())} weights, its header {e['kept']}")
            if "changed" in e:
                changed = _bits_like(weight, codec.decode(_blob(payload, e["changed"]), n))
                raw = _blob(payload, e["changed_values"])
                if len(raw) != 4 * int(changed.sum()) or (changed & ~mask).any():
                    raise ConfigError(f"{where}: layer {e['name']} has inconsistent changed weights")
                weight[changed] = torch.from_numpy(np.frombuffer(raw, "<f4").copy()).to(weight.dtype)
            if "alpha" in e:
                if float(biprop_alpha(weight, mask)) != e["alpha"]:
                    raise ConfigError(f"{where}: layer {e['name']} rebuilds with a different alpha than it was saved with")
            plain[e["name"]] = (layer, p.param_name, p.effective_weight(weight, mask.to(weight.dtype)).detach().clone())
    _bake_plain(model, plain)
    state = model.state_dict()
    for t in header["tensors"]:
        own = state[t["key"]]
        if own.numel():
            own.copy_(torch.frombuffer(bytearray(_blob(payload, t["data"])), dtype=own.dtype).view_as(own))
    return model.eval().requires_grad_(False)


def _bake_plain(model: nn.Module, weights: dict[str, tuple[nn.Module, str, torch.Tensor]]) -> None:
    from .convert import bake

    bake(model)
    with torch.no_grad():
        for layer, name, w in weights.values():
            getattr(layer, name).copy_(w)


def header_of(path: str | Path) -> dict[str, Any]:
    return read(path)[0]


def save_plain(model: nn.Module, path: str | Path) -> None:
    """The rebuilt network's dense weights as safetensors, for deployment without supermask."""
    from .checkpoint import save_tensors

    save_tensors(path, dict(model.state_dict()))


def example_input(header: dict[str, Any]) -> tuple[str, torch.Tensor]:
    """(name, a batch of two) of the input the header's architecture reads: int64 token ids (2, length) for a token
    model (its `image_size` is the sequence length, `in_channels` the vocabulary), else float images (2, C, H, W).
    Two samples, so that the trace cannot take the batch size for a constant 1."""
    if header["model"] in TOKEN_MODELS:
        # id 1, a real token: an all-padding sequence would mask every attention key
        return "tokens", torch.ones(2, header["image_size"], dtype=torch.int64)
    return "images", torch.zeros(2, header["in_channels"], header["image_size"], header["image_size"])


def save_onnx(model: nn.Module, header: dict[str, Any], path: str | Path) -> None:
    """The rebuilt network as ONNX, its input named `images` or `tokens` (see `example_input`), its output `logits`,
    any batch size (needs the `onnx` package: pip install 'supermask[export]')."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'supermask[export]'") from None
    import warnings

    name, x = example_input(header)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        # attention's checks of its own sizes, constants of the architecture (tests run other batch sizes)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(path), input_names=[name], output_names=["logits"],
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
