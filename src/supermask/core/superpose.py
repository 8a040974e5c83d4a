"""Inferring which task a batch comes from, over many tasks' masks on one network (SupSup's GNu setting; Wortsman
et al. 2020, `adaptors.py` of RAIVNLab/supsup).

Every masked layer's effective weight is superposed from the tasks' masks: W_eff = W * sum_i alpha_i M_i. With every
alpha_i = 1/k, the tasks that lower the output entropy H most are those whose alpha has the most negative gradient
dH/dalpha_i. As W_eff is linear in alpha, that gradient is one backward pass to G = dH/dW_eff and then, per task,
dH/dalpha_i = sum over layers of <G * W, M_i>, read off the bit-packed masks half a byte at a time (`masked_sums`): no
tensor of the tasks' size is ever a float, and the masks stay bit-packed (one bit a weight).

- `one_shot`: one gradient at alpha = 1/k, the task of the smallest dH/dalpha_i.
- `binary`: the candidates start as every task; at each step alpha = 1/c over the c candidates, and those whose
  gradient is at or below the (lower) median stay, halving them until one is left.
- `min-entropy`: no superposition; each task's own network, and the one whose outputs have the lowest entropy (N
  forward passes: the published code's exhaustive adaptor, `se_be_adapt`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

INFERENCE = ("one-shot", "binary", "min-entropy")


def pack(mask: Tensor | np.ndarray) -> Tensor:
    """A boolean mask as bits, eight a byte (numpy's packbits order)."""
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    return torch.from_numpy(np.packbits(mask.reshape(-1)))


def pack_tasks(masks: list[Tensor]) -> Tensor:
    """Masks of one weight, one a task, as a (tasks, bytes) tensor of their bits (a row per task, `pack`'s order).

    One allocation holds them all: thousands of small long-lived arrays, each made between the large passing ones of
    decoding, fragment the C heap, whose size then grows with the tasks as if the masks were bytes, not bits (100
    tasks of a 0.27 M-weight network: 150 MB, where their bits take 3.4 MB)."""
    rows = torch.empty((len(masks), (masks[0].numel() + 7) // 8), dtype=torch.uint8)
    for row, m in zip(rows, masks):
        row.copy_(pack(m))
    return rows


def unpack(bits: Tensor, shape: torch.Size) -> Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).view(np.bool_)).view(shape)


# _NIBBLE_BITS[v, k]: bit k of a 4-bit value v, most significant first (packbits' order: the first element is the
# highest bit)
_NIBBLE_BITS = torch.tensor([[(v >> (3 - k)) & 1 for k in range(4)] for v in range(16)], dtype=torch.float64)


def masked_sums(values: Tensor, rows: Tensor, chunk: int = 16) -> Tensor:
    """sum(values[M_i]) for each task's mask M_i, given as a row of bits (`pack_tasks`), without unpacking any: per
    half byte, a 16-entry table of the sums of `values` its bits would select, and each row's half bytes look theirs
    up (two lookups a byte instead of eight bits). `chunk` rows at a time bound the memory of the lookups."""
    n = values.numel()
    flat = torch.zeros((rows.shape[1] * 8,), dtype=torch.float64)
    flat[:n] = values.detach().reshape(-1).double()
    groups = flat.view(-1, 2, 4)  # (bytes, high and low half, 4 elements)
    high, low = groups[:, 0] @ _NIBBLE_BITS.T, groups[:, 1] @ _NIBBLE_BITS.T  # (bytes, 16)
    out = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk].long()
        out[start:start + chunk] = (high.gather(1, (part >> 4).T).sum(0) + low.gather(1, (part & 15).T).sum(0))
    return out


def entropy(logits: Tensor) -> Tensor:
    """The mean over the batch of the output distributions' entropy."""
    logits = logits.float()
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


class Superposition:
    """One network's frozen weights and N tasks' masks over them (bit-packed): the network's forward under any
    weighted sum of the masks, and the inference of a batch's task.

    `model` computes the network given its masked weights (by parameter key, as `functional_call` takes them);
    `weights` holds each masked weight W by key; `masks[key]` holds the tasks' masks of that weight, a row of bits
    per task (`pack_tasks`).
    """

    def __init__(self, model: nn.Module, weights: dict[str, Tensor], masks: dict[str, Tensor]):
        counts = {len(m) for m in masks.values()}
        if set(masks) != set(weights) or len(counts) != 1 or not counts.pop():
            raise ValueError("a superposition needs each masked weight's masks, one row per task, as many for each")
        self.model, self.weights, self.masks = model, weights, masks
        self._cache: tuple[tuple[float, ...], dict[str, Tensor]] | None = None

    @property
    def tasks(self) -> int:
        return len(next(iter(self.masks.values())))

    def mask(self, task: int, key: str) -> Tensor:
        return unpack(self.masks[key][task], self.weights[key].shape).to(self.weights[key].device)

    def superposed(self, alphas: Tensor) -> dict[str, Tensor]:
        """W * sum_i alpha_i M_i for every masked weight (tasks of alpha 0 skipped); the last one is kept, as a
        batch after batch asks for the same alphas."""
        key = tuple(alphas.tolist())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        out = {}
        for name, w in self.weights.items():
            total = torch.zeros_like(w)
            for i in torch.nonzero(alphas).flatten().tolist():
                total += alphas[i].item() * self.mask(i, name).to(w.dtype)
            out[name] = w * total
        self._cache = (key, out)
        return out

    def logits(self, x: Tensor, alphas: Tensor) -> Tensor:
        with torch.no_grad():
            return functional_call(self.model, self.superposed(alphas), (x,))

    def task_logits(self, x: Tensor, task: int) -> Tensor:
        """The outputs of task `task`'s own network (alpha one-hot)."""
        return self.logits(x, torch.eye(self.tasks, dtype=torch.float64)[task])

    def alpha_gradient(self, x: Tensor, alphas: Tensor, tasks: list[int] | None = None) -> Tensor:
        """dH/dalpha_i at `alphas` for each task i of `tasks` (default: all; the others' entries are 0)."""
        weights = {k: v.detach().clone().requires_grad_(True) for k, v in self.superposed(alphas).items()}
        h = entropy(functional_call(self.model, weights, (x,)))
        grads = torch.autograd.grad(h, list(weights.values()))
        out = torch.zeros(self.tasks, dtype=torch.float64)
        chosen = list(range(self.tasks)) if tasks is None else list(tasks)
        for (name, w), g in zip(self.weights.items(), grads):
            out[chosen] += masked_sums((g * w).cpu(), self.masks[name][chosen])
        return out

    def one_shot(self, x: Tensor) -> int:
        """The task whose alpha's gradient at alpha = 1/N is the smallest (lowers the entropy most)."""
        g = self.alpha_gradient(x, torch.full((self.tasks,), 1.0 / self.tasks, dtype=torch.float64))
        return int(g.argmin())

    def binary(self, x: Tensor) -> int:
        """Halve the candidates, keeping those whose gradient at alpha = 1/c (over the c candidates) is at or below
        their lower median, until one is left."""
        candidates = list(range(self.tasks))
        while len(candidates) > 1:
            alphas = torch.zeros(self.tasks, dtype=torch.float64)
            alphas[candidates] = 1.0 / len(candidates)
            g = self.alpha_gradient(x, alphas, candidates)[candidates]
            kept = [c for c, v in zip(candidates, g.tolist()) if v <= g.median().item()]
            # ties at the median could keep them all: then the lower-gradient half, by rank (stable, lowest index)
            if len(kept) == len(candidates):
                order = torch.argsort(g, stable=True)[: len(candidates) // 2].tolist()
                kept = sorted(candidates[j] for j in order)
            candidates = kept
        return candidates[0]

    def min_entropy(self, x: Tensor) -> int:
        """The task whose own network's outputs on the batch have the lowest mean entropy."""
        return int(torch.stack([entropy(self.task_logits(x, j)) for j in range(self.tasks)]).argmin())

    def infer(self, x: Tensor, how: str = "one-shot") -> int:
        if how not in INFERENCE:
            raise ValueError(f"unknown task inference {how!r}: expected one of {', '.join(INFERENCE)}")
        return {"one-shot": self.one_shot, "binary": self.binary, "min-entropy": self.min_entropy}[how](x)
