"""The accuracy along a path between two masks over the same random weights: each point interpolates the runs'
normalized scores and keeps the top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from supermask.analysis.landscape import check_finished
from supermask.core.convert import masked_layers, random_weight
from supermask.core.mask import kth_smallest, num_pruned
from supermask.errors import ConfigError
from supermask.run.train import evaluate, load_run_model, pick_device


def _normalized_magnitudes(scores: torch.Tensor, prune_rate: float) -> torch.Tensor:
    """|S| divided by the layer's largest pruned magnitude: a monotone rescaling, so its top-k is the same mask,
    and two runs' scores become comparable (each run's mask boundary sits at 1)."""
    mags = scores.detach().abs()
    k = num_pruned(mags.numel(), prune_rate)
    if k == 0:
        return mags
    return mags / kth_smallest(mags.reshape(-1), k).clamp_min(torch.finfo(mags.dtype).tiny)


@torch.no_grad()
def mask_path(run_a: str | Path, run_b: str | Path, *, steps: int = 11, device: str = "auto") -> dict[str, Any]:
    """Test accuracy of the masks top-k((1 - t) |S_A| + t |S_B|) (per-layer normalized) for t from 0 to 1.

    Both runs must share their random weights (same weight seed, no IWR or IteRand), so only the mask moves.
    """
    if steps < 2:
        raise ConfigError(f"a mask path needs at least 2 steps, got {steps}")
    check_finished(run_a)
    check_finished(run_b)
    cfg_a, ds, model, _ = load_run_model(run_a, device=device)
    cfg_b, _, model_b, _ = load_run_model(run_b, device=device)
    from supermask.core.methods import get_method

    if cfg_a.masked and not get_method(cfg_a.method).exact_count:
        raise ConfigError(f"a mask path keeps the top-k of each layer's interpolated scores; method={cfg_a.method} "
                          "masks by a threshold on its scores, which the path does not follow")
    if "global" in (cfg_a.prune_scope, cfg_b.prune_scope):
        raise ConfigError("a mask path keeps floor(p n) of each layer's interpolated scores; a prune_scope=global run "
                          "keeps them over all layers at once, which the path does not follow")
    same = ("model", "width", "method", "prune_rate", "dataset", "skip_layers", "skip_params", "include_params")
    diff = [k for k in same if getattr(cfg_a, k) != getattr(cfg_b, k)]
    if diff:
        k = diff[0]
        raise ConfigError(f"runs {run_a} and {run_b} differ in {k} ({getattr(cfg_a, k)!r} vs {getattr(cfg_b, k)!r}); "
                          "a mask path needs one architecture, method and set of masked weights")
    layers_a, layers_b = list(masked_layers(model)), list(masked_layers(model_b))
    if not layers_a:
        raise ConfigError(f"{run_a} is a dense run; a mask path needs mask searches")
    for (name, la, pa), (_, lb, pb) in zip(layers_a, layers_b):
        if not torch.equal(random_weight(la, pa), random_weight(lb, pb)):
            raise ConfigError(f"runs {run_a} and {run_b} have different weights in layer {name} (another weight seed, "
                              "or IWR/IteRand rewrote them); a mask path needs the same random weights")
    ends = [(_normalized_magnitudes(pa.scores, pa.prune_rate), _normalized_magnitudes(pb.scores, pb.prune_rate))
            for (_, _, pa), (_, _, pb) in zip(layers_a, layers_b)]
    masks_a = [pa.mask().clone() for _, _, pa in layers_a]
    masks_b = [pb.mask().clone() for _, _, pb in layers_b]
    dev = pick_device(cfg_a.device)
    points = []
    for t in np.linspace(0.0, 1.0, steps):
        differ_a = differ_b = total = 0
        for (_, _, p), (sa, sb), ma, mb in zip(layers_a, ends, masks_a, masks_b):
            p.scores.copy_((1 - t) * sa + t * sb)
            m = p.mask()
            differ_a += int((m != ma).sum())
            differ_b += int((m != mb).sum())
            total += m.numel()
        loss, acc = evaluate(model, ds, cfg_a.eval_batch_size, dev, amp=cfg_a.amp)
        points.append({"t": float(t), "test_acc": acc, "test_loss": loss,
                       "hamming_to_a": differ_a / total, "hamming_to_b": differ_b / total})
    return {"run_a": str(run_a), "run_b": str(run_b), "points": points}
