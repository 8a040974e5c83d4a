"""Per-layer norms of the kept and pruned weights (and of the weight the network computes with) beside a dense
network and its magnitude-pruned version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from supermask.analysis.landscape import check_finished
from supermask.core.convert import masked_layers, random_weight, weight_tensors
from supermask.core.labels import layer_labels
from supermask.core.mask import topk_mask
from supermask.core.methods import Biprop
from supermask.errors import ConfigError
from supermask.run.train import load_run_model


@torch.no_grad()
def layer_norms(run_dir: str | Path, *, dense_run: str | Path | None = None) -> dict[str, Any]:
    """Per masked layer: Frobenius norms of the kept and pruned random weights W (the weights under the mask) and
    of the effective weight the network computes with (`effective`: W * M for Edge-Popup, the same as `kept`;
    alpha * sign(W) * M for Biprop, with its `alpha`; W times the multiplicity for multicoat); with a dense run, also its layer norms and those of its
    magnitude-pruned version at the run's prune rate."""
    check_finished(run_dir)
    if dense_run is not None:
        check_finished(dense_run)
    cfg, _, model, _ = load_run_model(run_dir, device="cpu")
    layers = list(masked_layers(model))
    if not layers:
        raise ConfigError(f"{run_dir} is a dense run; norms of kept and pruned weights need a mask search")
    dense_weights = None
    if dense_run is not None:
        dcfg, _, dense, _ = load_run_model(dense_run, device="cpu")
        if dcfg.method != "dense" or (dcfg.model, dcfg.width) != (cfg.model, cfg.width):
            raise ConfigError(f"{dense_run} must be a dense run of {cfg.model} at width {cfg.width}")
        dense_weights = weight_tensors(dense)
    rows, labels = [], layer_labels(model)
    for name, layer, p in layers:
        w, m = random_weight(layer, p), p.mask()
        row = {"layer": name, "label": labels[name], "kept": float(w[m].norm()), "pruned": float(w[~m].norm()),
               "effective": float(p(w).norm())}  # the layer's own effective weight: W * m, M in {-1, 0, 1}, ...
        if isinstance(p, Biprop):
            row["alpha"] = float(p.alpha(w, m))
        if dense_weights is not None:
            d = dense_weights[name]
            keep = topk_mask(d.abs(), cfg.prune_rate)
            row.update(dense=float(d.norm()), magnitude_kept=float(d[keep].norm()), magnitude_pruned=float(d[~keep].norm()))
        rows.append(row)
    return {"run": str(run_dir), "dense_run": str(dense_run) if dense_run else None, "prune_rate": cfg.prune_rate,
            "method": cfg.label, "layers": rows}
