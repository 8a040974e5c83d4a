"""Atomic files and checkpoints: safetensors for tensors, JSON for everything else, nothing pickled."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from supermask.errors import ConfigError

META_KEY = "supermask"
ALIASES_KEY = "supermask_aliases"  # {name: name it is stored under} of tensors that share one storage (tied weights)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new file beside `name`, created with mode 0666 less the umask like any other output file
    (tempfile.mkstemp would make it 0600, and the rename would keep that)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def remove_orphan_temps(folder: Path) -> list[str]:
    """Delete the temporary files of writes a kill cut off (`.<name>.<hex>.tmp`, never renamed into place); only
    the folder's one writer, holding its lock, may call this. Returns their names."""
    pattern = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
    orphans = [p for p in folder.iterdir() if pattern.fullmatch(p.name)] if folder.is_dir() else []
    for p in orphans:
        p.unlink(missing_ok=True)
    return [p.name for p in orphans]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so a reader sees the old or the new file. An
    OSError names `path`: a full disk names no file, and the temporary file's name means nothing to a user."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _create_temp(path.parent, path.name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and (e.filename is None or Path(e.filename).name.startswith(f".{path.name}.")):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Rows as CSV with a header line (keys outside `fields` are left out), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object written by supermask (summary.json and the like); unreadable or corrupt is a ConfigError."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ConfigError(f"{path} is corrupt: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is corrupt: it holds {type(obj).__name__}, not a JSON object")
    return obj


def _shared_once(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors to store, aliases): a tensor that is the very same view of another's storage (a tied weight, an
    embedding and its output layer) is stored once under the first name and the others alias it; one that overlaps
    another's storage otherwise is stored as a copy. safetensors refuses shared storage."""
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in tensors.items():
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in views:
            aliases[name] = views[view]
            continue
        shared = t.numel() > 0 and storage in storages
        views[view], kept[name] = name, t.clone() if shared else t
        if t.numel():
            storages.add(storage)
    return kept, aliases


def save_tensors(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any] | None = None) -> None:
    """Tensors and JSON metadata as a safetensors file, written atomically; tensors sharing memory are stored
    once (see `_shared_once`), and `load_tensors` gives them back sharing it again."""
    kept, aliases = _shared_once({k: v.detach() for k, v in tensors.items()})
    kept = {k: v.contiguous().cpu() for k, v in kept.items()}
    metadata = {META_KEY: json.dumps(meta)} if meta is not None else {}
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases)
    atomic_write_bytes(path, st_save(kept, metadata=metadata or None))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Tensors and the JSON metadata of a safetensors file; a missing or corrupt file is a ConfigError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw = (header.get("__metadata__") or {}).get(META_KEY)
        meta = json.loads(raw) if raw is not None else None
        aliases = json.loads((header.get("__metadata__") or {}).get(ALIASES_KEY, "{}"))
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as e:
        raise ConfigError(f"{path} is corrupt or not a safetensors file ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(aliases, dict) or any(not isinstance(stored, str) or a in tensors or stored not in tensors
                                            for a, stored in aliases.items()):
        raise ConfigError(f"{path} is corrupt: its shared-tensor list does not match its tensors")
    for alias, stored in aliases.items():  # one tensor again under each of its names, as it was saved
        tensors[alias] = tensors[stored]
    return tensors, meta


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Per-parameter optimizer state (momentum buffers, Adam moments) as flat named tensors."""
    out = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if not isinstance(value, Tensor):
                value = torch.tensor(value)
            out[f"{i}.{key}"] = value
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optimizer.{k}": v for k, v in optimizer_tensors(optimizer).items()})
    save_tensors(path, tensors, meta)


def state_mismatch(own: dict[str, Tensor], given: dict[str, Tensor], shown: int = 3) -> str:
    """How a state dict differs from a model's, in one line ('' when the names and shapes agree)."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {list(given[k].shape)} in the file, {list(v.shape)} in the model"
              for k, v in own.items() if k in given and given[k].shape != v.shape]
    parts = [f"{len(items)} {label} ({', '.join(items[:shown])}{', ...' if len(items) > shown else ''})"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
             if items]
    return "; ".join(parts)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (and optimizer) state in place; returns the checkpoint's metadata."""
    tensors, meta = load_tensors(path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    mismatch = state_mismatch(model.state_dict(), model_state)
    if mismatch:
        raise ConfigError(f"{path} does not match this model: {mismatch}")
    try:
        model.load_state_dict(model_state, strict=True)
        if optimizer is not None:
            load_optimizer_tensors(optimizer, {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")})
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{path} does not match this model ({str(e).splitlines()[0][:160]})") from None
    if meta is None:
        raise ConfigError(f"{path} has no supermask metadata; it is not a supermask checkpoint")
    return meta
