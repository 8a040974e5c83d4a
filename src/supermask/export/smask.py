"""A found network as a few kilobytes: the seeds, the masks as near-entropy codes, and only what a seed cannot
give back. `export_run` writes a `.smask` file; `load` rebuilds an ordinary `nn.Module` from it.

File layout (docs/smask-format.md has the full description):

    b"SMASK\\x00\\r\\n"  u32 format version  u32 header length  header (UTF-8 JSON)  payload  sha256(all before)

The header describes the architecture, method, seeds and init, how an input is prepared (`preprocessing`), and
where each blob of the payload is: each masked layer's mask (see `supermask.export.codec`), its Biprop alpha, the kept
weights whose value no longer equals the seed's (after IWR or IteRand) with their new values, and every other
tensor of the model (BatchNorm statistics, biases, layers left dense) as raw little-endian float32. The checksum is verified before anything
is parsed; then the header must conform to `HEADER` (a small declarative schema), and every name, shape, count
and blob range is checked against the rebuilt architecture before any mask is decoded or weight assembled.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from supermask.core.convert import convert, masked_layers, random_weight, weight_tensors
from supermask.core.mask import num_pruned
from supermask.core.methods import get_method
from supermask.data.batches import PIXEL_SCALE
from supermask.errors import ConfigError
from supermask.export import codec
from supermask.models import MODELS, TOKEN_MODELS, build_model
from supermask.run.checkpoint import atomic_write_bytes, load_checkpoint, read_json
from supermask.run.config import FIELDS, make_config, recorded_config
from supermask.run.files import CHECKPOINT, CONFIG_FILE, SUMMARY, TASKS_FILE

MAGIC = b"SMASK\x00\r\n"
VERSION = 2  # 2 added `preprocessing` and `amp`, and the masks' compact blob heads (see codec)
TASKS_VERSION = 3  # 3 added tasks: N tasks' masks over one seed (`tasks`), or one task of a stream (`task`)
READABLE_VERSIONS = (1, 2, 3)
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
MAX_HEADER = 1 << 24
MAX_ELEMENTS = 1 << 28  # parameters a .smask file may describe (1 GiB of float32)


# The config keys that, with the input shape, rebuild a run's network from its seed.
REBUILD_KEYS = ("model", "width", "method", "prune_rate", "weight_init", "scale_fan", "weight_seed", "skip_layers")
OPTIONAL_REBUILD_KEYS = ("skip_params", "include_params", "scale_fan_by", "weight_source", "prune_scope",
                         "multicoat_prune_rates", "multicoat_scale", "layer_streams", "biprop_alpha_count",
                         "layer_density", "pruned_count", "score_rank")  # absent from files written before they existed


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
NUMBERS = _Kind("a list of finite numbers", lambda v: type(v) is list and all(NUMBER.ok(x) for x in v))
ACCURACY = _Kind("a number or null", lambda v: v is None or NUMBER.ok(v))

# The header's schema: a dict is an object (a key ending in "?" is optional, no other key is allowed), a one-item
# list a list of that kind. docs/smask-format.md describes each field.
LAYER = {"name": TEXT, "shape": SHAPE, "kept": COUNT, "mask": SPAN, "alpha?": NUMBER, "changed?": SPAN,
         "changed_values?": SPAN, "levels?": [SPAN]}
TENSOR = {"key": TEXT, "shape": SHAPE, "dtype": TEXT, "data": SPAN}
# one task of a file of many: its network's masks and tensors, accuracy, data and class names
TASK = {"layers": [LAYER], "tensors": [TENSOR], "test_acc": ACCURACY, "dataset": TEXT, "dataset_sha256?": TEXT,
        "classes": NAMES}
# the image fields are present exactly for "input": "images" (see _check_preprocessing)
PREPROCESSING = {"input": TEXT, "channel_order?": TEXT, "image_size?": COUNT, "resize?": TEXT, "crop_fraction?": NUMBER,
                 "scale?": NUMBER, "mean?": NUMBERS, "std?": NUMBERS, "classes": NAMES}
IMAGE_FIELDS = ("channel_order", "image_size", "resize", "scale", "mean", "std")
HEADER = {"format": TEXT, "version": COUNT, "model": TEXT, "width": NUMBER, "num_classes": COUNT,
          "in_channels": COUNT, "image_size": COUNT, "method": TEXT, "label": TEXT, "prune_rate": NUMBER,
          "weight_init": TEXT, "scale_fan": FLAG, "weight_seed": INT, "skip_layers": NAMES, "skip_params?": NAMES,
          "include_params?": NAMES, "scale_fan_by?": TEXT, "weight_source?": TEXT, "prune_scope?": TEXT,
          "multicoat_prune_rates?": NUMBERS, "multicoat_scale?": TEXT, "layer_streams?": TEXT, "biprop_alpha_count?": TEXT, "layer_density?": TEXT, "pruned_count?": TEXT, "score_rank?": TEXT, "channels_last?": FLAG, "amp?": FLAG,
          "preprocessing?": PREPROCESSING, "dataset": TEXT, "dataset_sha256?": TEXT, "eval_split_sha256?": TEXT,
          "data_mode?": TEXT, "test_acc": ACCURACY, "layers": [LAYER], "task_stream?": TEXT, "task?": COUNT, "normalization?": TEXT, "holdout?": COUNT, "holdout_seed?": COUNT,
          "tasks?": [TASK],
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
    # The file records a token model's vocabulary size and sequence length in in_channels and image_size.
    shape = ({"vocab_size": header["in_channels"], "seq_len": header["image_size"]} if header["model"] in TOKEN_MODELS
             else {"in_channels": header["in_channels"], "image_size": header["image_size"]})
    return build_model(header["model"], num_classes=header["num_classes"], width=header["width"], **shape)


def _skeleton(header: dict) -> nn.Module:
    """The architecture with the seed's random weights, converted as the run was (scores are irrelevant), in the
    run's memory layout: float sums (Biprop's alpha, a conv's) depend on it, and the rebuild must equal the run."""
    model = convert(_architecture(header), header["method"], header["prune_rate"], weight_init=header["weight_init"],
                    scale_fan=header["scale_fan"], weight_seed=header["weight_seed"],
                    skip=header["skip_layers"] + header.get("skip_params", []), include=header.get("include_params", []),
                    scale_fan_by=header.get("scale_fan_by", "kept"), weight_source=header.get("weight_source", "full"),
                    prune_scope=header.get("prune_scope", "layer"), layer_streams=header.get("layer_streams", "independent"),
                    layer_density=header.get("layer_density", "uniform"),
                    # what the method's layers take from the header (multicoat: its coats' prune rates)
                    options=get_method(header["method"]).options_from(SimpleNamespace(**header)))
    return model.to(memory_format=torch.channels_last) if header.get("channels_last") else model


def _bits_like(weight: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    """A decoded flat mask as a bool tensor of the weight's shape and memory layout."""
    return torch.empty_like(weight, dtype=torch.bool).copy_(torch.from_numpy(bits).view(weight.shape))


def export_run(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the finished run in `run_dir` (or, for a run of many tasks, every task's network: see
    `supermask.export.multitask`) as a `.smask` file; returns a size report."""
    run_dir = Path(run_dir)
    check_output(path, "the .smask file")
    if (run_dir / TASKS_FILE).is_file():
        from supermask.export.multitask import export_tasks

        return export_tasks(run_dir, path)
    payload = bytearray()
    header, sizes = encode_run(run_dir, payload)
    header["payload_length"] = len(payload)
    data = pack(header, payload)
    atomic_write_bytes(path, data)
    return size_report(path, data, sizes)


def pack(header: dict[str, Any], payload: bytearray) -> bytes:
    """The file's bytes: prefix, header, payload and checksum."""
    head = json.dumps(header, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, header["version"], len(head)) + head + bytes(payload)
    return body + hashlib.sha256(body).digest()


def size_report(path: str | Path, data: bytes, sizes: dict[str, Any]) -> dict[str, Any]:
    mask_bytes, entropy, heads = sizes["mask_bytes"], sizes["entropy_bytes"], sizes["mask_head_bytes"]
    return {"file": str(path), "bytes": len(data), "mask_bytes": mask_bytes, "entropy_bytes": round(entropy, 1),
            "mask_vs_entropy": round(mask_bytes / entropy, 4) if entropy else None, "mask_layers": sizes["mask_layers"],
            "mask_head_bytes": heads, "codes_vs_entropy": round((mask_bytes - heads) / entropy, 4) if entropy else None,
            "overhead_bytes": len(data) - mask_bytes, "dense_float32_bytes": sizes["dense_float32_bytes"],
            "compression": round(sizes["dense_float32_bytes"] / len(data), 1)}


def encode_run(run_dir: Path, payload: bytearray) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header of the finished run in `run_dir` (its layers and tensors included, `payload_length` not), its
    blobs appended to `payload`, and the sizes its report gives."""
    summary_file = run_dir / SUMMARY
    if not summary_file.is_file():
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
    summary = read_json(summary_file)
    cfg = recorded_config(str(run_dir / CONFIG_FILE))
    if not cfg.masked:
        raise ConfigError(f"{run_dir} is a dense run: there is no mask to export")
    if cfg.weight_init == "keep":
        raise ConfigError(f"{run_dir} searched masks over weights it was given (weight_init=keep): no seed rebuilds them")
    header: dict[str, Any] = {
        "format": "supermask", "version": VERSION,
        **{k: v for k, v in cfg.to_dict().items() if k in REBUILD_KEYS + ("dataset", "channels_last")},
        # written only where they differ from the default, so files that do not use them stay as they were
        **{k: v for k, v in cfg.to_dict().items() if k in OPTIONAL_REBUILD_KEYS and v and v != FIELDS[k].default},
        "label": cfg.label, "test_acc": summary.get("test_acc"),
    }
    if cfg.task_stream is not None and cfg.task is not None:  # one task of a stream: its data is that task's
        header.update(version=TASKS_VERSION, task_stream=cfg.task_stream, task=cfg.task)
    if cfg.normalization != "dataset":  # eval normalizes the data as the run did
        header["normalization"] = cfg.normalization
    if cfg.holdout:  # the training images it held out: eval rebuilds the same split, so the checksum compares
        header.update(holdout=cfg.holdout, holdout_seed=cfg.holdout_seed)
    for key in ("dataset_sha256", "eval_split_sha256"):  # eval of a streamed set compares the second
        if isinstance(summary.get(key), str):
            header[key] = summary[key]
    if summary.get("data_mode") == "stream":  # eval reads it streamed again (files of sets in memory stay as they were)
        header["data_mode"] = "stream"
    if cfg.amp:  # the run computed under autocast: its outputs are rebuilt under the same (see evaluate_smask)
        header["amp"] = True
    shape_keys = ("num_classes", "in_channels", "image_size")
    if all(k in summary for k in shape_keys + ("preprocessing",)):
        header.update({k: summary[k] for k in shape_keys + ("preprocessing",)})
    else:  # runs written before summaries recorded the input shape and preprocessing: read them off the dataset
        from supermask.data import preprocessing
        from supermask.run.train import load_data

        ds = load_data(cfg)
        header.update(num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size,
                      preprocessing=preprocessing(ds))
    if cfg.outputs is not None and cfg.outputs > header["num_classes"]:  # superfluous outputs: named, never a label
        header["preprocessing"] = {**header["preprocessing"], "classes": header["preprocessing"]["classes"] + [
            f"(unused {i})" for i in range(header["num_classes"], cfg.outputs)]}
        header["num_classes"] = cfg.outputs
    trained = _skeleton(header)
    load_checkpoint(run_dir / CHECKPOINT, trained)
    seeded = _skeleton(header)
    seeded_weights = {name: random_weight(layer, p) for name, layer, p in masked_layers(seeded)}

    def put(data: bytes) -> list[int]:
        payload.extend(data)
        return [len(payload) - len(data), len(data)]

    layers, mask_bytes, entropy, heads = [], 0, 0.0, 0
    spec = get_method(cfg.method)
    for name, layer, p in masked_layers(trained):
        mask = p.mask().cpu()
        weight = random_weight(layer, p).detach().cpu()
        changed = mask & (weight != seeded_weights[name])
        blob = codec.encode(mask.numpy())
        heads += codec.head_bytes(blob, mask.numel())
        entry = {"name": name, "shape": list(weight.shape), "kept": int(mask.sum()), "mask": put(blob)}
        mask_bytes += len(blob)
        entropy += codec.entropy_bits(mask.numel(), int(mask.sum())) / 8
        stored = p.levels()
        if stored is not None and len(stored) > 1:  # further levels, each over the kept weights of the one before
            stored = [m.cpu() for m in stored]
            entry["levels"] = []
            for before, nested in zip(stored, stored[1:]):
                blob = codec.encode(nested[before].numpy())
                entry["levels"].append(put(blob))
                mask_bytes += len(blob)
                entropy += codec.entropy_bits(int(before.sum()), int(nested.sum())) / 8
        if changed.any():
            entry["changed"] = put(codec.encode(changed.numpy()))
            entry["changed_values"] = put(weight[changed].to(torch.float32).numpy().astype("<f4").tobytes())
        if spec.smask_layer is not None:  # what the method stores per layer (Biprop: its alpha)
            entry.update(spec.smask_layer(p, weight, mask))
        layers.append(entry)
    others = []
    for key, tensor in _other_tensors(trained).items():
        t = tensor.detach().cpu().contiguous()
        others.append({"key": key, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                       "data": put(t.numpy().tobytes())})
    header.update(layers=layers, tensors=others)
    dense_bytes = 4 * sum(w.numel() for w in weight_tensors(trained).values())
    return header, {"mask_bytes": mask_bytes, "entropy_bytes": entropy, "mask_head_bytes": heads,
                    "mask_layers": len(layers), "dense_float32_bytes": dense_bytes,
                    "kept": sum(e["kept"] for e in layers)}


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
    if version not in READABLE_VERSIONS:
        raise ConfigError(f"{path} is .smask format version {version}; this supermask reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
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
    if header["format"] != "supermask" or header["version"] not in READABLE_VERSIONS:
        raise ConfigError(f"{where}: header says format {header['format']!r} version {header['version']}, "
                          f"not supermask version {' or '.join(map(str, READABLE_VERSIONS))}")
    if header["model"] not in MODELS:
        raise ConfigError(f"{where}: unknown architecture {header['model']!r}")
    _check_preprocessing(header, where)
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


def _check_preprocessing(header: dict, where: str) -> None:
    """`preprocessing` (required from version 2) must describe the input of the header's own network."""
    if "preprocessing" not in header:
        if header["version"] >= 2:
            raise ConfigError(f"{where}: header lacks the field 'preprocessing'")
        return
    pre, what = header["preprocessing"], f"{where}: preprocessing"
    tokens = header["model"] in TOKEN_MODELS
    if pre["input"] != ("tokens" if tokens else "images"):
        raise ConfigError(f"{what} says input {pre['input']!r}; a {header['model']} network reads "
                          f"{'tokens' if tokens else 'images'}")
    if len(pre["classes"]) != header["num_classes"]:
        raise ConfigError(f"{what} names {len(pre['classes'])} classes; the network has {header['num_classes']}")
    present = [k for k in IMAGE_FIELDS if k in pre]
    if tokens and (present or "crop_fraction" in pre):
        raise ConfigError(f"{what} has image fields for a network that reads tokens")
    if tokens:
        return
    if len(present) != len(IMAGE_FIELDS):
        raise ConfigError(f"{what} lacks {', '.join(k for k in IMAGE_FIELDS if k not in pre)}")
    order = {1: "L", 3: "RGB"}.get(header["in_channels"])
    problems = [
        (pre["channel_order"] != order, f"channel_order {pre['channel_order']!r}, for {header['in_channels']} channels"),
        (pre["image_size"] != header["image_size"], f"image_size {pre['image_size']}, not {header['image_size']}"),
        (pre["resize"] not in ("whole", "center-crop") or ("crop_fraction" in pre) != (pre["resize"] == "center-crop")
         or not 0 < pre.get("crop_fraction", 1) <= 1, f"resize {pre['resize']!r} with crop_fraction {pre.get('crop_fraction')}"),
        (pre["scale"] != PIXEL_SCALE, f"scale {pre['scale']}, not 1/255"),
        (not len(pre["mean"]) == len(pre["std"]) == header["in_channels"] or min(pre["std"], default=0) <= 0,
         f"{len(pre['mean'])} means and {len(pre['std'])} stds (positive) for {header['in_channels']} channels"),
    ]
    bad = [text for wrong, text in problems if wrong]
    if bad:
        raise ConfigError(f"{what} has {bad[0]}")


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
    # a top-k keeps floor(p n) out per layer, or in all (global); a threshold (Gem-Miner) at most n
    exact = get_method(header["method"]).exact_count
    global_scope = header.get("prune_scope") == "global"
    totals = [0, 0]  # weights and kept, over the masked layers
    for e in header["layers"]:
        layer, p = layers[e["name"]]
        shape, what = list(random_weight(layer, p).shape), f"{where}: layer {e['name']}"
        if e["shape"] != shape:
            raise ConfigError(f"{what} has shape {e['shape']}, the architecture {shape}")
        n = random_weight(layer, p).numel()
        if exact and not global_scope and e["kept"] != n - num_pruned(n, p.prune_rate, p.count):  # floor(p n) a layer
            raise ConfigError(f"{what} keeps {e['kept']} weights; prune_rate {header['prune_rate']} keeps "
                              f"{n - num_pruned(n, p.prune_rate, p.count)} of {n}")
        if not 0 <= e["kept"] <= n:
            raise ConfigError(f"{what} keeps {e['kept']} of its {n} weights")
        totals[0] += n
        totals[1] += e["kept"]
        # a multi-level mask (multicoat, signed-supermask) stores each further level its layer has
        expected = len(p.level_sizes(n))
        if len(e.get("levels", [])) != expected:  # (the count alone: no mask is selected to check it)
            raise ConfigError(f"{what} has {len(e.get('levels', []))} further mask levels; its method makes {expected}")
        spans += [(what, span) for span in e.get("levels", [])]
        extras = set(e) - {"name", "shape", "kept", "mask", "changed", "changed_values", "levels"}
        if ("changed" in e) != ("changed_values" in e) or extras != set(get_method(header["method"]).smask_fields):
            raise ConfigError(f"{what} has an inconsistent set of fields {sorted(e)}")
        spans += [(what, e[k]) for k in ("mask", "changed", "changed_values") if k in e]
    if exact and global_scope and totals[1] != totals[0] - num_pruned(totals[0], header["prune_rate"]):  # floor(p n) in all
        raise ConfigError(f"{where}: its masks keep {totals[1]} of {totals[0]} weights; prune_rate "
                          f"{header['prune_rate']} over all of them keeps {totals[0] - num_pruned(totals[0], header['prune_rate'])}")
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


def task_view(header: dict[str, Any], task: int | None, where: str) -> dict[str, Any]:
    """The header of one network of a conforming header: the file's own network, or task `task`'s of a file of
    many tasks (its masks, tensors, accuracy, data checksum and class names in place of the file's)."""
    tasks = header.get("tasks")
    if header["version"] < TASKS_VERSION and any(k in header for k in ("tasks", "task", "task_stream")):
        raise ConfigError(f"{where}: header has task fields, which need format version {TASKS_VERSION}")
    if tasks is None:
        if task is not None and task != header.get("task"):
            holds = f"task {header['task']} of {header['task_stream']}" if "task" in header else "no tasks"
            raise ConfigError(f"{where} holds one network ({holds}): task={task} chooses among the networks of a run "
                              "of many tasks")
        return header
    if "task" in header or header["layers"] or header["tensors"]:
        raise ConfigError(f"{where}: a file of many tasks keeps its networks under 'tasks' alone")
    if task is None:
        raise ConfigError(f"{where} holds the networks of {len(tasks)} tasks: choose one with task=N (0 to "
                          f"{len(tasks) - 1}), or task=infer")
    if not 0 <= task < len(tasks):
        raise ConfigError(f"task={task} is outside the tasks of {where}, 0 to {len(tasks) - 1}")
    one = tasks[task]
    view = {k: v for k, v in header.items() if k not in ("tasks", "dataset_sha256")}
    view.update(task=task, layers=one["layers"], tensors=one["tensors"], test_acc=one["test_acc"],
                **({"dataset_sha256": one["dataset_sha256"]} if "dataset_sha256" in one else {}))
    if "preprocessing" in view:
        view["preprocessing"] = {**view["preprocessing"], "classes": one["classes"]}
    return view


def read_view(path: str | Path, task: int | None = None) -> tuple[dict[str, Any], memoryview]:
    """(header of one network, payload) of a `.smask` file: checked as `read` does, conforming to the schema, and
    narrowed to task `task`'s network in a file of many tasks."""
    header, payload = read(path)
    _conform(header, HEADER, f"{path}: header")
    return task_view(header, task, str(path)), payload


def load(path: str | Path, task: int | None = None) -> nn.Module:
    """Rebuild the network of a `.smask` file (task `task`'s, of a file of many tasks) as an ordinary module (plain
    Conv/Linear weights), in eval mode and in the memory layout the run computed in, so its outputs equal the
    run's exactly."""
    header, payload = read_view(path, task)
    where = str(path)
    model = _build(header, where)
    _validate(header, payload, model, where)
    layers = {name: (layer, p) for name, layer, p in masked_layers(model)}
    spec = get_method(header["method"])
    head = "wide" if header["version"] == 1 else "compact"  # how the file's mask blobs begin (see codec)
    plain: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    with torch.no_grad():
        for e in header["layers"]:
            layer, p = layers[e["name"]]
            weight = random_weight(layer, p)
            n = weight.numel()
            mask = _bits_like(weight, codec.decode(_blob(payload, e["mask"]), n, head))
            if int(mask.sum()) != e["kept"]:
                raise ConfigError(f"{where}: layer {e['name']}'s mask keeps {int(mask.sum())} weights, its header {e['kept']}")
            if "changed" in e:
                changed = _bits_like(weight, codec.decode(_blob(payload, e["changed"]), n, head))
                raw = _blob(payload, e["changed_values"])
                if len(raw) != 4 * int(changed.sum()) or (changed & ~mask).any():
                    raise ConfigError(f"{where}: layer {e['name']} has inconsistent changed weights")
                weight[changed] = torch.from_numpy(np.frombuffer(raw, "<f4").copy()).to(weight.dtype)
            level = mask
            if "levels" in e:  # a multi-level mask: each further level over the kept weights of the one before
                stored = [mask]
                for span, size in zip(e["levels"], p.level_sizes(n)):
                    before = stored[-1]
                    nested = torch.zeros_like(before)
                    nested[before] = torch.from_numpy(codec.decode(_blob(payload, span), int(before.sum()), head))
                    if size is not None and int(nested.sum()) != size:
                        raise ConfigError(f"{where}: layer {e['name']}'s mask level {len(stored) + 1} keeps "
                                          f"{int(nested.sum())} weights, not {size}")
                    stored.append(nested)
                level = p.level_value(stored)
            if spec.smask_layer is not None:
                for key, value in spec.smask_layer(p, weight, mask).items():
                    if value != e[key]:
                        raise ConfigError(f"{where}: layer {e['name']} rebuilds with a different {key} than it was "
                                          "saved with")
            plain[e["name"]] = (layer, p.param_name, p.effective_weight(weight, level.to(weight.dtype)).detach().clone())
    _bake_plain(model, plain)
    state = model.state_dict()
    for t in header["tensors"]:
        own = state[t["key"]]
        if own.numel():
            own.copy_(torch.frombuffer(bytearray(_blob(payload, t["data"])), dtype=own.dtype).view_as(own))
    return model.eval().requires_grad_(False)


def _bake_plain(model: nn.Module, weights: dict[str, tuple[nn.Module, str, torch.Tensor]]) -> None:
    from supermask.core.convert import bake

    bake(model)
    with torch.no_grad():
        for layer, name, w in weights.values():
            getattr(layer, name).copy_(w)


def header_of(path: str | Path, task: int | None = None) -> dict[str, Any]:
    """The header of the file's network (of task `task`'s network, in a file of many tasks)."""
    return read_view(path, task)[0]


def metadata_strings(header: dict[str, Any]) -> dict[str, str]:
    """The header's preprocessing as the string-to-string metadata of a safetensors or ONNX file: each field under
    its own name, strings as they are, numbers and lists as JSON (empty for a version-1 file, which has none)."""
    pre = header.get("preprocessing", {})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in pre.items()}


def save_plain(model: nn.Module, path: str | Path, header: dict[str, Any]) -> None:
    """The rebuilt network's dense weights as safetensors, for deployment without supermask; its metadata holds
    the preprocessing (`metadata_strings`)."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata_strings(header) or None))


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
    any batch size, the preprocessing in its `metadata_props` (`metadata_strings`). Needs the `onnx` package:
    pip install 'supermask[export]'."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'supermask[export]'") from None
    import warnings

    name, x = example_input(header)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        # attention's checks of its own sizes, constants of the architecture (tests run other batch sizes)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, input_names=[name], output_names=["logits"],
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata_strings(header).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, graph.SerializeToString())


def read_image(path: str | Path, pre: dict[str, Any]) -> torch.Tensor:
    """An image file as the uint8 (C, size, size) tensor the network's preprocessing makes of it, before scaling:
    streamed sets' evaluation crop, or for sets held in memory the whole image in the channel order, resized
    (bilinear) to the size when it has another."""
    from PIL import Image

    from supermask.data.transforms import eval_transform

    size = pre["image_size"]
    try:
        with Image.open(path) as img:
            if pre["resize"] == "center-crop":
                return eval_transform(img, size)
            img = img.convert(pre["channel_order"])
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.array(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"cannot read image {path}: {reason}") from None
    return torch.from_numpy(np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)))


def predict(path: str | Path, images: list[str], *, top: int = 3, device: str = "cpu",
            task: int | None = None) -> list[dict[str, Any]]:
    """The `top` most likely classes (name, probability) of each image for the `.smask` network at `path` (task
    `task`'s, in a file of many tasks), each image prepared as its header's `preprocessing` says, under the run's
    autocast when it trained with amp."""
    from supermask.data import normalize
    from supermask.run.train import autocast, pick_device

    header = header_of(path, task)
    model = load(path, task)
    pre = header.get("preprocessing")
    if pre is None:
        raise ConfigError(f"{path} is .smask version {header['version']}, which does not record how images are "
                          "prepared; export its run again with this supermask")
    if pre["input"] != "images":
        raise ConfigError(f"predict reads images; {path} is a {header['model']} network, which reads token ids")
    if top < 1:
        raise ConfigError(f"top must be >= 1, not {top}")
    dev = pick_device(device)
    pixels = torch.stack([read_image(image, pre) for image in images])  # every image checked before any is run
    model, parts = model.to(dev), []
    for batch in pixels.split(256):
        x = normalize(batch.to(dev), pre["mean"], pre["std"])
        x = x.contiguous(memory_format=torch.channels_last) if header.get("channels_last") else x
        with torch.no_grad(), autocast(bool(header.get("amp")), dev):
            parts.append(torch.softmax(model(x).float(), dim=1).cpu())
    probabilities = torch.cat(parts)
    best = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
    return [{"image": str(image), "top": [{"class": pre["classes"][i], "probability": p}
                                          for p, i in zip(values.tolist(), indices.tolist())]}
            for image, values, indices in zip(images, best.values, best.indices)]


def evaluate_smask(path: str | Path, *, device: str = "auto", dataset: str | None = None,
                   data_dir: str | None = None, task: int | None = None) -> dict[str, Any]:
    """Rebuild a `.smask` network (task `task`'s, of a file of many tasks) and measure its test accuracy on the
    dataset it was found on (that task's data; or `dataset` / in `data_dir`), in the memory layout and precision
    (autocast of an amp run) the file records."""
    from supermask import data as data_lib
    from supermask.run.train import data_check, evaluate, pick_device

    header = header_of(path, task)
    model = load(path, task)
    dev = pick_device(device)
    ds = file_dataset(header, path, dataset, data_dir)
    replaced = data_lib.ReplacedCount()
    loss, acc = evaluate(model.to(dev), ds, 1000, dev, replaced=replaced, amp=bool(header.get("amp")))
    return {"file": str(path), **({"task": header["task"]} if "task" in header else {}), "test_loss": loss,
            "test_acc": acc, "recorded_test_acc": header.get("test_acc"), **data_check(ds, header, replaced)}


def file_dataset(header: dict[str, Any], path: str | Path, dataset: str | None, data_dir: str | None):
    """The data a network's header says it was found on (its task's, for one task of a stream), or `dataset`."""
    from supermask import data as data_lib
    from supermask.data.prepare import as_trained

    streamed = header.get("data_mode") == "stream"  # read as the run read it: streamed at its image size
    if "task" in header and "task_stream" not in header and dataset is None:
        raise ConfigError(f"{path}'s tasks are a stream of datasets given in Python: pass task {header['task']}'s "
                          "data as dataset=PATH")
    ds = data_lib.load_dataset(dataset or header["dataset"], data_dir, mode="stream" if streamed else "memory",
                               image_size=header["image_size"] if streamed else None)
    # The network's inputs are normalized as it was trained, whatever the data; another dataset is neither a task
    # of the stream nor split.
    own = dataset is None
    return as_trained(ds, task_stream=header.get("task_stream") if own else None, task=header.get("task"),
                      normalization=header.get("normalization", "dataset"),
                      holdout=header.get("holdout", 0) if own else 0,
                      holdout_seed=header.get("holdout_seed", FIELDS["holdout_seed"].default))[0]
