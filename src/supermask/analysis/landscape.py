"""The mask landscape: how alike are the masks that different runs found?

For two masks of one layer, A and B, with n weights:

    matching = 1 - |A xor B| / n            (1 - normalized Hamming distance)
    jaccard  = |A and B| / |A or B|         (the true Jaccard index; the public analysis code's "total
                                              Jaccard" divided by |A| + |B| instead, which double-counts)

Chance levels are those of two independent random masks keeping the same numbers of weights: with keep
fraction k, matching k^2 + (1-k)^2 and Jaccard k / (2-k); for the whole network, the ratio of the summed
expectations over layers. Masks are packed into bits, so comparing many masks of millions of weights is fast.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from supermask.core.labels import labels_from_shapes
from supermask.errors import ConfigError
from supermask.run.checkpoint import load_tensors, read_json
from supermask.run.files import MASKS, SUMMARY

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
TOTAL = "total"


def popcount(bits: np.ndarray) -> int:
    """Number of set bits in a uint8 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a vectorized hardware popcount
        return int(np.bitwise_count(bits).sum(dtype=np.int64))
    return int(_POPCOUNT[bits].sum())


@dataclass(frozen=True)
class PackedMask:
    """One layer's mask as packed bits (trailing pad bits are zero), with its number of kept weights."""

    bits: np.ndarray
    n: int
    kept: int

    @classmethod
    def from_tensor(cls, mask: torch.Tensor) -> "PackedMask":
        flat = mask.detach().reshape(-1).to(torch.bool).cpu().numpy()
        bits = np.packbits(flat)
        return cls(bits, flat.size, popcount(bits))


def pack(masks: dict[str, torch.Tensor]) -> dict[str, PackedMask]:
    return {name: PackedMask.from_tensor(m) for name, m in masks.items()}


@dataclass(frozen=True)
class LayerCounts:
    """What a pair of masks of n weights share: |A|, |B|, |A and B|."""

    n: int
    a: int
    b: int
    both: int

    @property
    def union(self) -> int:
        return self.a + self.b - self.both

    @property
    def matching(self) -> float:
        return 1.0 - (self.union - self.both) / self.n

    @property
    def jaccard(self) -> float:
        return self.both / self.union if self.union else 1.0

    # Expectations for independent uniformly random masks with the same kept counts.
    @property
    def expected_both(self) -> float:
        return self.a * self.b / self.n

    @property
    def chance_matching(self) -> float:
        return 1.0 - (self.a + self.b - 2 * self.expected_both) / self.n

    @property
    def chance_jaccard(self) -> float:
        union = self.a + self.b - self.expected_both
        return self.expected_both / union if union else 1.0

    def __add__(self, other: "LayerCounts") -> "LayerCounts":
        return LayerCounts(self.n + other.n, self.a + other.a, self.b + other.b, self.both + other.both)


def pair_counts(a: dict[str, PackedMask], b: dict[str, PackedMask]) -> dict[str, LayerCounts]:
    """Per-layer counts for two runs' packed masks, plus the whole network under TOTAL."""
    out = {}
    for name, ma in a.items():
        mb = b[name]
        out[name] = LayerCounts(ma.n, ma.kept, mb.kept, popcount(np.bitwise_and(ma.bits, mb.bits)))
    total = LayerCounts(0, 0, 0, 0)
    for counts in out.values():
        total = total + counts
    out[TOTAL] = total
    return out


def chance_jaccard(k: float) -> float:
    """Jaccard index expected of two independent random masks with keep fraction k."""
    return k / (2 - k)


def chance_matching(k: float) -> float:
    return k * k + (1 - k) * (1 - k)


@dataclass
class Run:
    """What the comparison needs of a run directory."""

    name: str
    path: Path
    masks: dict[str, PackedMask]
    shapes: dict[str, tuple[int, ...]]
    summary: dict
    labels: dict[str, str]  # key -> readable label (supermask.core.labels)

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "?"))

    @property
    def test_acc(self) -> float | None:
        return self.summary.get("test_acc")


def check_finished(path: str | Path) -> None:
    """compare, path and norms read finished runs only: those with a summary.json, which a run writes last."""
    if not (Path(path) / SUMMARY).is_file():
        raise ConfigError(f"{path} is not a finished run (no summary.json); finish it first "
                          f"(supermask train ... out_dir={path} --resume)")


def load_run(path: str | Path) -> Run:
    path = Path(path)
    check_finished(path)
    masks_file = path / MASKS
    if not masks_file.is_file():
        raise ConfigError(f"{path} has no masks.safetensors; is it a finished supermask run?")
    tensors, meta = load_tensors(masks_file)
    if not tensors:
        raise ConfigError(f"{path} holds no masks (a dense run?); only mask searches can be compared")
    tensors = {name: tensors[name] for name in layer_order(tensors, meta)}
    summary_file = path / SUMMARY
    summary = read_json(summary_file) if summary_file.is_file() else {}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    return Run(path.name, path, pack(tensors), shapes, summary, recorded_labels(shapes, meta))


def recorded_labels(shapes: dict[str, tuple[int, ...]], meta: dict | None) -> dict[str, str]:
    """The layers' labels as the run recorded them, else (runs made before labels were recorded) rebuilt from the
    keys and mask shapes."""
    recorded = (meta or {}).get("labels")
    if (isinstance(recorded, dict) and sorted(recorded) == sorted(shapes)
            and all(isinstance(v, str) for v in recorded.values()) and len(set(recorded.values())) == len(recorded)):
        return {k: recorded[k] for k in shapes}
    return labels_from_shapes(shapes)


def layer_order(tensors: dict, meta: dict | None) -> list[str]:
    """The layers in model order: as recorded by the run, else by name with numbers compared as numbers."""
    recorded = (meta or {}).get("layers")
    if isinstance(recorded, list) and sorted(recorded) == sorted(tensors):
        return list(recorded)
    return sorted(tensors, key=lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])


def check_same_architecture(runs: list[Run]) -> None:
    ref = runs[0]
    for r in runs[1:]:
        if r.shapes != ref.shapes:
            diff = sorted(set(r.shapes.items()) ^ set(ref.shapes.items()))
            layer = diff[0][0] if diff else "?"
            raise ConfigError(f"runs {ref.path} and {r.path} have different architectures (layer {layer!r} differs); "
                              "compare runs of one model and width")


def unique_names(paths: list[Path]) -> list[str]:
    """Short names for the runs: the shortest suffix of each one's path that no other path ends with (its folder
    name where that is unique). The paths must name distinct directories (see check_distinct)."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for i, ps in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i]
        k = next((k for k in range(1, len(ps)) if all(q[-k:] != ps[-k:] for q in others)), len(ps))
        names.append(Path(*ps[-k:]).as_posix())
    return names


def check_distinct(paths: list[Path]) -> None:
    """Refuse a run directory given twice (however spelled): it would be compared with itself."""
    seen: dict[Path, Path] = {}
    for p in paths:
        real = Path(p).resolve()
        if real in seen:
            same = "" if str(seen[real]) == str(p) else f" (as {seen[real]} and {p})"
            raise ConfigError(f"run {p} is given twice{same}; give each run once")
        seen[real] = Path(p)


def compare(runs: list[Run]) -> list[dict]:
    """One row per (pair, layer) with matching, jaccard and their chance levels; layer TOTAL for the network."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs")
    check_same_architecture(runs)
    rows = []
    for ra, rb in itertools.combinations(runs, 2):
        for layer, c in pair_counts(ra.masks, rb.masks).items():
            rows.append({"run_a": ra.name, "run_b": rb.name, "method_a": ra.method, "method_b": rb.method,
                         "layer": layer, "label": ra.labels.get(layer, layer), "matching": c.matching,
                         "jaccard": c.jaccard, "chance_matching": c.chance_matching,
                         "chance_jaccard": c.chance_jaccard})
    return rows


def summarize(rows: list[dict], runs: list[Run]) -> dict:
    """Per method pair and layer: mean, min and max of matching and jaccard over the pairs, with chance."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        key = "|".join(sorted((r["method_a"], r["method_b"])))
        groups.setdefault(key, {}).setdefault(r["layer"], []).append(r)
    out = {}
    for key, layers in groups.items():
        out[key] = {}
        for layer, rs in layers.items():
            entry = {"pairs": len(rs)}
            for metric in ("matching", "jaccard", "chance_matching", "chance_jaccard"):
                values = [r[metric] for r in rs]
                entry[metric] = float(np.mean(values))
                if not metric.startswith("chance"):
                    entry[f"{metric}_min"], entry[f"{metric}_max"] = float(min(values)), float(max(values))
            out[key][layer] = entry
    return {"runs": [{"name": r.name, "path": str(r.path), "method": r.method, "test_acc": r.test_acc,
                      "score_seed": r.summary.get("score_seed"), "weight_seed": r.summary.get("weight_seed")}
                     for r in runs],
            "layers": list(runs[0].masks) + [TOTAL], "labels": {**runs[0].labels, TOTAL: TOTAL}, "by_method_pair": out}


def hamming_matrix(runs: list[Run], rows: list[dict]) -> np.ndarray:
    """Normalized Hamming distances between the runs' whole masks, read off `compare`'s rows."""
    index = {r.name: i for i, r in enumerate(runs)}
    d = np.zeros((len(runs), len(runs)))
    for row in rows:
        if row["layer"] == TOTAL:
            i, j = index[row["run_a"]], index[row["run_b"]]
            d[i, j] = d[j, i] = 1.0 - row["matching"]
    return d


def classical_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """Points whose Euclidean distances best match `distances` (Torgerson's classical scaling)."""
    n = len(distances)
    centering = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centering @ (distances ** 2) @ centering
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:dims]
    return vectors[:, top] * np.sqrt(np.clip(values[top], 0, None))


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path, *, plots: bool = True) -> dict:
    """Compare the runs' masks: writes pairs.csv, summary.json and (with matplotlib) PNG plots to out_dir."""
    from supermask.run.checkpoint import write_csv, write_json

    paths = [Path(p) for p in run_dirs]
    check_distinct(paths)
    runs = [load_run(p) for p in paths]
    for run, name in zip(runs, unique_names(paths)):
        run.name = name
    rows = compare(runs)
    summary = summarize(rows, runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "pairs.csv", rows, ["run_a", "run_b", "layer", "label", "matching", "jaccard",
                                            "chance_matching", "chance_jaccard"])
    write_json(out_dir / SUMMARY, summary)
    if plots:
        from supermask.analysis import plots as plots_lib

        summary["plots"] = plots_lib.draw_landscape(runs, rows, summary, out_dir)
        write_json(out_dir / SUMMARY, summary)
    return summary
