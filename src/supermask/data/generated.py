"""Datasets made in code: sklearn's bundled digits and the generated ListOps token sequences."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence

import numpy as np
import torch

from .base import Dataset, _Arrays, _to_dataset, default_cache_dir
from .cache import _CACHE_VERSION, _read_cache, _write_cache


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """sklearn's 8x8 digits with a fixed stratified 80/20 split (RandomState(0), independent of user seeds)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N,1,8,8)
    y = bunch.target.astype(np.int64)
    rng = np.random.RandomState(0)
    test_idx = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[: int(round(0.2 * len(idx)))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    arrays = _Arrays(x[~is_test], y[~is_test], x[is_test], y[is_test], tuple(str(c) for c in range(10)))
    return _to_dataset("digits", arrays, "sklearn:load_digits")


# --------------------------------------------------------------------------------------------- #
# ListOps (generated token sequences)

# ListOps (Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning"; the Long Range Arena's
# ListOps task, Tay et al. 2021, is a longer variant): nested operators over digits, e.g. [MAX 2 9 [MIN 4 7 ] 0 ]
# (= 9), labelled with their value 0-9. Their generator's settings: an argument is itself an operation with
# probability 0.25, 2 to 5 arguments, depth at most 20; MED is the median rounded down (int(np.median)), SM the sum
# modulo 10. The small variant here: the root is always an operation, sequences of at most 64 tokens, no sequence
# twice, 20,000 for training and the next 2,000 for testing, all drawn from seed 0.
LISTOPS_TOKENS = ("<pad>", *(str(d) for d in range(10)), "[MAX", "[MIN", "[MED", "[SM", "]")
_LISTOPS_OPS = ("[MAX", "[MIN", "[MED", "[SM")
_LISTOPS = {"seed": 0, "train": 20_000, "test": 2_000, "max_len": 64, "max_depth": 20, "max_args": 5, "op_p": 0.25}


def listops_value(op: str, args: Sequence[int]) -> int:
    """The value of one ListOps operation over digits."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        s, n = sorted(args), len(args)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def _listops_tree(rng: random.Random, depth: int, out: list[str]) -> int:
    """Append one random expression's tokens to `out` and return its value (the root is always an operation)."""
    cfg = _LISTOPS
    if depth > 0 and (depth >= cfg["max_depth"] or rng.random() >= cfg["op_p"]):
        value = int(rng.random() * 10)
        out.append(str(value))
        return value
    op = _LISTOPS_OPS[int(rng.random() * len(_LISTOPS_OPS))]
    n_args = 2 + int(rng.random() * (cfg["max_args"] - 1))
    out.append(op)
    args = [_listops_tree(rng, depth + 1, out) for _ in range(n_args)]
    out.append("]")
    return listops_value(op, args)


def generate_listops(n: int, seed: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` distinct random expressions of at most `max_len` tokens, as int64 token ids (N, max_len) padded with
    0 at the end (ids index LISTOPS_TOKENS), and their int64 values. Only `random.Random(seed).random()` is
    drawn, whose stream Python keeps stable across versions."""
    rng = random.Random(seed)
    ids = {t: i for i, t in enumerate(LISTOPS_TOKENS)}
    x = np.zeros((n, max_len), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    seen: set[tuple[str, ...]] = set()
    while len(seen) < n:
        tokens: list[str] = []
        value = _listops_tree(rng, 0, tokens)
        if len(tokens) > max_len or tuple(tokens) in seen:
            continue
        i = len(seen)
        seen.add(tuple(tokens))
        x[i, : len(tokens)] = [ids[t] for t in tokens]
        y[i] = value
    return x, y


@functools.lru_cache(maxsize=1)
def _load_listops() -> Dataset:
    """The fixed ListOps split, generated once (a few seconds) and kept in the .npz cache."""
    cfg = _LISTOPS
    source = "generated:listops(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
    cache_dir = default_cache_dir()
    digest = hashlib.sha1(f"{source} v{_CACHE_VERSION}".encode()).hexdigest()[:24]
    file = None if cache_dir is None else cache_dir / f"listops-{digest}.npz"
    arrays = None if file is None else _read_cache(file)
    if arrays is None:
        x, y = generate_listops(cfg["train"] + cfg["test"], cfg["seed"], cfg["max_len"])
        n = cfg["train"]
        arrays = _Arrays(x[:n], y[:n], x[n:], y[n:], tuple(str(c) for c in range(10)))
        if file is not None:
            _write_cache(file, arrays)
    t = torch.from_numpy
    return Dataset(name="listops", train_x=t(arrays.train_x), train_y=t(arrays.train_y), test_x=t(arrays.test_x),
                   test_y=t(arrays.test_y), classes=arrays.classes, mean=(), std=(), source=source, augment=False,
                   vocab_size=len(LISTOPS_TOKENS))
