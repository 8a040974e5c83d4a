"""A found network as a few kilobytes: the seeds, the masks as near-entropy codes, and only what a seed cannot
give back. `export_run` writes a `.smask` file; `load` rebuilds an ordinary `nn.Module` from it.

File layout (docs/smask-format.md has the full description):

    b"SMASK\\x00\\r\\n"  u32 format version  u32 header length  header (UTF-8 JSON)  payload  sha256(all before)

The header describes the architecture, method, seeds and init, and where each blob of the payload is: each
masked layer's mask (see `supermask.codec`), its Biprop alpha, the kept weights whose value no longer equals
the seed's (after IWR or IteRand) with their new values, and every other tensor of the model (BatchNorm
statistics, biases, layers left dense) as raw little-endian float32. The checksum is verified before anything
is parsed, and every length and shape is checked against the architecture before anything is allocated.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import codec
from .checkpoint import atomic_write_bytes, load_checkpoint
from .config import make_config
from .convert import convert, masked_layers, random_weight, weight_tensors
from .errors import ConfigError
from .methods import biprop_alpha
from .models import MODELS, build_model

MAGIC = b"SMASK\x00\r\n"
VERSION = 1
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
MAX_HEADER = 1 << 24
MAX_ELEMENTS = 1 << 28  # parameters a .smask file may describe (1 GiB of float32)


# The config keys that, with the input shape, rebuild a run's network from its seed.
REBUILD_KEYS = ("model", "width", "method", "prune_rate", "weight_init", "scale_fan", "weight_seed", "skip_layers")
OPTIONAL_REBUILD_KEYS = ("skip_params", "include_params")  # absent from files written before they existed


def _architecture(header: dict) -> nn.Module:
    return build_model(header["model"], num_classes=header["num_classes"], in_channels=header["in_channels"],
                       image_size=header["image_size"], width=header["width"])


def _skeleton(header: dict) -> nn.Module:
    """The architecture with the seed's random weights, converted as the run was (scores are irrelevant)."""
    return convert(_architecture(header), header["method"], header["prune_rate"], weight_init=header["weight_init"],
                   scale_fan=header["scale_fan"], weight_seed=header["weight_seed"],
                   skip=header["skip_layers"] + header.get("skip_params", []), include=header.get("include_params", []))


def export_run(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the finished run in `run_dir` as a `.smask` file; returns a size report."""
    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
    summary = json.loads(summary_file.read_text())
    cfg = make_config(str(run_dir / "config.yaml"))
    if not cfg.masked:
        raise ConfigError(f"{run_dir} is a dense run: there is no mask to export")
    if cfg.weight_init == "keep":
        raise ConfigError(f"{run_dir} searched masks over weights it was given (weight_init=keep): no seed rebuilds them")
    header: dict[str, Any] = {
        "format": "supermask", "version": VERSION,
        **{k: v for k, v in cfg.to_dict().items() if k in REBUILD_KEYS + ("dataset",)},
        **{k: v for k, v in cfg.to_dict().items() if k in OPTIONAL_REBUILD_KEYS and v},
        "label": cfg.label, "test_acc": summary.get("test_acc"),
    }
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
    for key, tensor in trained.state_dict().items():
        if ".parametrizations." in f".{key}":
            continue  # a masked weight (every parametrization is convert's): rebuilt from the seed, mask and changes
        t = tensor.detach().cpu().contiguous()
        others.append({"key": key, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                       "data": put(t.numpy().tobytes())})
    header.update(layers=layers, tensors=others, payload_length=len(payload))
    head = json.dumps(header, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, VERSION, len(head)) + head + bytes(payload)
    data = body + hashlib.sha256(body).digest()
    atomic_write_bytes(path, data)
    dense_bytes = 4 * sum(w.numel() for w in weight_tensors(trained).values())
    return {"file": str(path), "bytes": len(data), "mask_bytes": mask_bytes, "entropy_bytes": round(entropy, 1),
            "mask_vs_entropy": round(mask_bytes / entropy, 4) if entropy else None,
            "overhead_bytes": len(data) - mask_bytes, "dense_float32_bytes": dense_bytes,
            "compression": round(dense_bytes / len(data), 1)}


def read(path: str | Path) -> tuple[dict[str, Any], memoryview]:
    """(header, payload) of a `.smask` file, after checking magic, version, length and checksum."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < _PREFIX.size + _DIGEST or not data.startswith(MAGIC):
        raise ConfigError(f"{path} is not a .smask file (bad magic or too short)")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise ConfigError(f"{path} is .smask format version {version}; this supermask reads version {VERSION}")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ConfigError(f"{path} is corrupt: its checksum does not match (truncated or modified)")
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


def _blob(payload: memoryview, span: Any, what: str) -> bytes:
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and v >= 0 for v in span)
            and span[0] + span[1] <= len(payload)):
        raise ConfigError(f"{what}: blob range {span!r} is outside the payload")
    return bytes(payload[span[0]:span[0] + span[1]])


def load(path: str | Path) -> nn.Module:
    """Rebuild the network of a `.smask` file as an ordinary module (plain Conv/Linear weights), in eval mode."""
    header, payload = read(path)
    where = str(path)
    try:
        if header.get("model") not in MODELS:
            raise ConfigError(f"{where}: unknown architecture {header.get('model')!r}")
        make_config(None, {k: header[k] for k in REBUILD_KEYS + tuple(k for k in OPTIONAL_REBUILD_KEYS if k in header)})
        for key in ("num_classes", "in_channels", "image_size"):
            if not isinstance(header.get(key), int) or not 0 < header[key] < 1 << 20:
                raise ConfigError(f"{where}: bad {key} {header.get(key)!r}")
        with torch.device("meta"):  # count the parameters before allocating any
            probe = _architecture(header)
        if sum(p.numel() for p in probe.parameters()) > MAX_ELEMENTS:
            raise ConfigError(f"{where}: describes a network of more than {MAX_ELEMENTS:,} parameters")
        model = _skeleton(header)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: header does not describe a supermask network ({e})") from None
    layers = {name: (layer, p) for name, layer, p in masked_layers(model)}
    entries = header.get("layers")
    if not isinstance(entries, list) or sorted(str(e.get("name")) for e in entries if isinstance(e, dict)) != sorted(layers):
        raise ConfigError(f"{where}: its masked layers do not match the {header['model']} architecture")
    plain: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    with torch.no_grad():
        for e in entries:
            layer, p = layers[e["name"]]
            weight = random_weight(layer, p)
            if list(weight.shape) != e.get("shape"):
                raise ConfigError(f"{where}: layer {e['name']} has shape {e.get('shape')}, the architecture {list(weight.shape)}")
            n = weight.numel()
            mask = torch.from_numpy(codec.decode(_blob(payload, e.get("mask"), e["name"]), n)).view_as(weight)
            if "changed" in e:
                changed = torch.from_numpy(codec.decode(_blob(payload, e["changed"], e["name"]), n)).view_as(weight)
                raw = _blob(payload, e.get("changed_values"), e["name"])
                if len(raw) != 4 * int(changed.sum()) or (changed & ~mask).any():
                    raise ConfigError(f"{where}: layer {e['name']} has inconsistent changed weights")
                weight[changed] = torch.from_numpy(np.frombuffer(raw, "<f4").copy()).to(weight.dtype)
            if "alpha" in e:
                if float(biprop_alpha(weight, mask)) != e["alpha"]:
                    raise ConfigError(f"{where}: layer {e['name']} rebuilds with a different alpha than it was saved with")
            plain[e["name"]] = (layer, p.param_name, p.effective_weight(weight, mask.to(weight.dtype)).detach().clone())
    _bake_plain(model, plain)
    state = model.state_dict()
    for t in header.get("tensors", []):
        key = t.get("key")
        if key not in state or list(state[key].shape) != t.get("shape") or str(state[key].dtype).replace("torch.", "") != t.get("dtype"):
            raise ConfigError(f"{where}: tensor {key!r} does not fit the architecture")
        raw = _blob(payload, t.get("data"), str(key))
        if len(raw) != state[key].numel() * state[key].element_size():
            raise ConfigError(f"{where}: tensor {key!r} has the wrong length")
        state[key].copy_(torch.frombuffer(bytearray(raw), dtype=state[key].dtype).view_as(state[key]))
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


def save_onnx(model: nn.Module, header: dict[str, Any], path: str | Path) -> None:
    """The rebuilt network as ONNX (needs the `onnx` package: pip install 'supermask[export]')."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'supermask[export]'") from None
    import warnings

    x = torch.zeros(1, header["in_channels"], header["image_size"], header["image_size"])
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
