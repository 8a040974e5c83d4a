"""Pictures of the mask landscape (matplotlib, imported only when drawing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from supermask.analysis.landscape import TOTAL, Run, classical_mds, hamming_matrix


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from supermask.errors import ConfigError

        raise ConfigError("plots need matplotlib: pip install 'supermask[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_landscape(runs: list[Run], rows: list[dict], summary: dict, out_dir: Path) -> list[str]:
    """The heatmap, the per-layer curves and the MDS map; returns the files written."""
    plt = _pyplot()
    written = [heatmap(plt, runs, rows, out_dir / "heatmap.png"), layer_curves(plt, summary, out_dir / "layers.png"),
               mds_map(plt, runs, rows, out_dir / "mds.png")]
    return [str(p.name) for p in written if p is not None]


def _groups(runs: list[Run]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.method, []).append(i)
    return groups


def heatmap(plt, runs: list[Run], rows: list[dict], path: Path) -> Path:
    """Total Jaccard between every pair of runs; with two methods of equal counts, one per triangle."""
    jac = {(r["run_a"], r["run_b"]): r["jaccard"] for r in rows if r["layer"] == TOTAL}
    jac.update({(b, a): v for (a, b), v in list(jac.items())})
    groups = _groups(runs)
    sizes = {len(v) for v in groups.values()}
    shared = len(groups) == 2 and len(sizes) == 1
    if shared:
        (name_a, idx_a), (name_b, idx_b) = groups.items()
        n = len(idx_a)
        grid = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(n):
                if i < j:
                    grid[i, j] = jac[(runs[idx_a[i]].name, runs[idx_a[j]].name)]
                elif i > j:
                    grid[i, j] = jac[(runs[idx_b[i]].name, runs[idx_b[j]].name)]
        labels = [f"seed {runs[i].summary.get('score_seed', k)}" for k, i in enumerate(idx_a)]
        title = f"Jaccard of whole masks\n{name_a} (upper), {name_b} (lower)"
    else:
        n = len(runs)
        grid = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(n):
                if i != j:
                    grid[i, j] = jac[(runs[i].name, runs[j].name)]
        labels = [r.name for r in runs]
        title = "Jaccard of whole masks"
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.6 * n), max(4.0, 1.2 + 0.6 * n)))
    im = ax.imshow(grid, cmap="viridis")
    for i in range(n):
        for j in range(n):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(plt, fig, path)


def layer_curves(plt, summary: dict, path: Path) -> Path:
    """Mean Jaccard per layer with a min-max band over pairs, one curve per method, and the chance line."""
    layers = [l for l in summary["layers"] if l != TOTAL]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(layers)), 3.6))
    x = np.arange(len(layers))
    for key, by_layer in summary["by_method_pair"].items():
        a, b = key.split("|")
        if a != b:
            continue  # curves compare runs of one method; cross-method pairs stay in the CSV
        mean = [by_layer[l]["jaccard"] for l in layers]
        ax.plot(x, mean, marker="o", label=a)
        ax.fill_between(x, [by_layer[l]["jaccard_min"] for l in layers], [by_layer[l]["jaccard_max"] for l in layers], alpha=0.25)
        ax.plot(x, [by_layer[l]["chance_jaccard"] for l in layers], ls="--", color="gray", lw=1)
    ax.plot([], [], ls="--", color="gray", label="random masks (chance)")
    labels = summary.get("labels", {})
    ax.set_xticks(x, [labels.get(l, l) for l in layers], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="Jaccard index", title="Mask overlap per layer\n(mean, min-max band over pairs of runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def mds_map(plt, runs: list[Run], rows: list[dict], path: Path) -> Path | None:
    """All masks in 2-D (classical MDS on Hamming distances), coloured by test accuracy."""
    if len(runs) < 3:
        return None
    points = classical_mds(hamming_matrix(runs, rows))
    acc = np.array([r.test_acc if r.test_acc is not None else np.nan for r in runs], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4))
    markers = dict(zip(_groups(runs), "osD^v<>p"))
    for method, marker in markers.items():
        idx = [i for i, r in enumerate(runs) if r.method == method]
        sc = ax.scatter(points[idx, 0], points[idx, 1], c=100 * acc[idx], marker=marker, cmap="plasma",
                        vmin=np.nanmin(100 * acc), vmax=np.nanmax(100 * acc), label=method, edgecolors="k")
    fig.colorbar(sc, ax=ax, label="test accuracy (%)")
    ax.set(title="Masks, MDS of Hamming distances", xlabel="MDS 1", ylabel="MDS 2")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def path_plot(result: dict, path: Path) -> Path:
    """Test accuracy along the path from mask A (t = 0) to mask B (t = 1), with the distance from A."""
    plt = _pyplot()
    t = [p["t"] for p in result["points"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(t, [100 * p["test_acc"] for p in result["points"]], marker="o", color="C0")
    ax.set(xlabel="t (0 = mask A, 1 = mask B)", ylabel="test accuracy (%)", title="Accuracy between two masks")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(t, [p["hamming_to_a"] for p in result["points"]], ls="--", color="C1")
    twin.set_ylabel("normalized Hamming distance to A", color="C1")
    return _save(plt, fig, path)


def norms_plot(result: dict, path: Path) -> Path:
    """Per-layer Frobenius norms: kept and pruned random weights of the run, the effective weights it computes with
    where they differ (Biprop's alpha * sign(W) * M), and the dense net's magnitude pruning."""
    plt = _pyplot()
    rows = result["layers"]
    series = [("kept", f"{result['method']} kept (random W)"), ("pruned", f"{result['method']} pruned (random W)")]
    if any("alpha" in r for r in rows):  # norms of runs made before `effective` was recorded have no alpha either
        series.append(("effective", f"{result['method']} effective (alpha sign(W) M)"))
    if result.get("dense_run"):
        series += [("dense", "dense"), ("magnitude_kept", "dense, magnitude-kept"),
                   ("magnitude_pruned", "dense, magnitude-pruned")]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 3.8))
    for i, (key, label) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [r[key] for r in rows], width, label=label)
    ax.set_xticks(x, [r.get("label", r["layer"]) for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="Frobenius norm", title=f"Per-layer weight norms ({100 * result['prune_rate']:g}% pruned)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


# Below this many seeds a t interval is wide enough to mislead at a glance (t(0.975, 4) = 2.78): its n is written.
SMALL_N = 5


def clipped_bar(mean: float, half_width: float, low: float, high: float) -> tuple[float, float]:
    """The error bar of mean ± half_width drawn within the possible range [low, high], as matplotlib's (below,
    above) lengths: an accuracy interval of n = 2 can reach past 0% and 100%, which no run can."""
    return mean - max(low, mean - half_width), min(high, mean + half_width) - mean


def seed_plot(cells: list[dict], differences: list[dict], axes: list[str], path: Path) -> Path:
    """Test accuracy per cell (mean with its 95% interval as error bars, one line per method), one panel per value
    of the axes besides the x axis (prune_rate when it varies); below, the paired differences from the base methods.
    A one-seed point is drawn hollow, without an error bar; bars are clipped to the possible range (accuracy in
    [0, 100], a difference in [-100, 100]), and a point of fewer than SMALL_N seeds is labelled with its n."""
    plt = _pyplot()
    x_key = "prune_rate" if "prune_rate" in axes else (axes[0] if axes else None)
    panel_keys = [k for k in axes if k != x_key]
    panels = list(dict.fromkeys(tuple(c[k] for k in panel_keys) for c in cells))
    xs = list(dict.fromkeys(c[x_key] for c in cells)) if x_key else [None]
    rows = 2 if differences else 1
    fig, grid = plt.subplots(rows, len(panels), figsize=(5.5 * len(panels), 4 * rows), squeeze=False)

    def draw(ax, entries: list[dict], series: str, low: float) -> None:
        names = list(dict.fromkeys(e[series] for e in entries))
        for i, name in enumerate(names):
            shift = 0.06 * (i - (len(names) - 1) / 2)  # error bars of one x side by side, not on top of each other
            pts = [(xs.index(e[x_key] if x_key else None) + shift, e) for e in entries if e[series] == name]
            pos = [p for p, _ in pts]
            line = ax.plot(pos, [e["mean"] for _, e in pts], label=name, color=f"C{i}")[0]
            for p, e in pts:
                seeded = e["ci_half_width"] is not None
                bar = [[v] for v in clipped_bar(e["mean"], e["ci_half_width"], low, 100.0)] if seeded else None
                ax.errorbar(p, e["mean"], yerr=bar, capsize=3, marker="o",
                            color=line.get_color(), mfc=line.get_color() if seeded else "white")
                if seeded and e["n"] < SMALL_N:
                    ax.annotate(f"n={e['n']}", (p, e["mean"]), xytext=(4, 4), textcoords="offset points", fontsize=7,
                                color=line.get_color())
        ax.set_xticks(range(len(xs)), [_tick(x) for x in xs])
        ax.set_xlabel(x_key or "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    for j, panel in enumerate(panels):
        title = ", ".join(f"{k}={_tick(v)}" for k, v in zip(panel_keys, panel))
        at = dict(zip(panel_keys, panel))
        ax = grid[0][j]
        draw(ax, [c for c in cells if all(c[k] == v for k, v in at.items())], "method", 0.0)
        ax.set(title=title or "test accuracy", ylabel="test accuracy (%), mean ± 95% CI")
        if differences:
            ax = grid[1][j]
            diffs = [{**d, "pair": f"{d['method']} - {d['base']}"} for d in differences
                     if all(d[k] == v for k, v in at.items())]
            if diffs:
                draw(ax, diffs, "pair", -100.0)
            ax.axhline(0, color="gray", lw=1, ls="--")
            ax.set(ylabel="paired difference (points), ± 95% CI")
    fig.text(0.01, 0.005, f"hollow points: one seed, no interval; n written below {SMALL_N} seeds; bars clipped to "
                          "the possible range", fontsize=7)
    return _save(plt, fig, path)


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
