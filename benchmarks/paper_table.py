"""Reproduce the IWR paper's CIFAR-10 accuracy table: a grid of (model, width, prune rate, method, seed).

    SUPERMASK_DATA=../shared/datasets python benchmarks/paper_table.py --profile cpu     # ~1 hour on 2 cores
    SUPERMASK_DATA=../shared/datasets python benchmarks/paper_table.py --profile vit     # ~3 hours, over sessions
    python benchmarks/paper_table.py --profile full                                     # the paper's recipe (GPU)

The grid runs on `supermask.multi.sweep` (local worker processes, or Ray with --ray; --together N trains up to N seeds
of a cell in one process): each cell is an ordinary run under runs/paper_table/, a finished cell is reused and a
killed one resumed. Each seed sets the weight, score and data seeds together. Dense training prunes nothing, so
it runs once per seed, at the grid's first prune rate, and is shown in the row of every prune rate.
Aggregated as `supermask sweep` does:
Writes benchmarks/results/<name>.json (a row per run, per cell n, mean and 95% interval over the seeds, and the
paired differences IWR - base and IteRand - Edge-Popup with their verdicts, plus the machine), <name>.md (the table
beside the published figures, then the differences) and <name>.png (accuracy against prune rate with error bars,
and the differences).

A table can span sessions whose runs/ does not survive: the three files are rewritten after every finished cell
(the JSON and markdown atomically), and each row of the JSON records its cell's resolved config. Run again, the
script takes a cell whose run directory is gone from its row in <name>.json when that row's config is the cell's
own, and trains only the cells missing from both; a recorded row of another config (say the built-in config
changed) is refused, naming the keys that differ, unless --retrain (a refusal leaves the files as they were). Rows
of cells outside the grid run are kept; rows written before rows recorded their config are dropped. So a session
runs the command and commits the three files after each cell (`git add benchmarks/results/paper_table_vit.*`), and
the next session starts the same command again (a cell cut off by the end of a session starts over, unless its run
directory survived: then it resumes).

The vit profile is issue 11's table: ViT-Lite-7/4 (`vit`, its built-in config: Adam, lr 1e-3, label smoothing
0.1) at width 0.25 on the CIFAR-10 copy, 10 epochs, Edge-Popup, Biprop, EP+IWR and Biprop+IWR at 50% and 90%
pruned, and dense: 9 runs. benchmarks/results/step_time_vit.json measured 0.45 s per Edge-Popup step (0.47
Biprop, 0.41 dense) at batch 128 on 2 threads: 391 steps and a test pass per epoch. Alone on 2 cores (--workers 1,
2 threads) an epoch took about 2 minutes and a cell 20 (1172 s for Biprop+IWR at 90%), the table about 3 hours;
two at a time (--workers 2, a thread each) an epoch took 5 minutes and a cell 50, so one at a time is faster here.
The papers publish no transformer figures, and no IWR recipe for one: vit takes
`recipes.paper_schedule`'s default, the recipe the paper gives every model but Conv-6 and ResNet-18 (EP+IWR F 3,
r 0.1; Biprop+IWR has one recipe, F 10, r 0.2). The paper states no rule behind the exception (Conv-8, larger than
Conv-6, keeps the default), so the default it is: the recipe of the cpu profile's Conv-4 at width 0.25, a network
of about vit's size at width 0.25 (0.15 M weights against 0.24 M), so the two tables compare like with like.

Short runs scale the IWR period with the run (F as a fraction of training: the paper's F / 250 epochs), or the
schedule would never fire (10 epochs: F 1 for both recipes, recycling after epochs 1 to 8 counted from 0, 8 steps);
IteRand keeps its period of 300 iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, portable_path  # noqa: E402

from supermask.run.checkpoint import atomic_write_text, read_json, write_json  # noqa: E402
from supermask.run.config import make_config, recorded_config  # noqa: E402
from supermask.run.recipes import PAPER_EPOCHS, paper_epochs, paper_schedule  # noqa: E402
from supermask.errors import ConfigError, SupermaskError  # noqa: E402
from supermask.multi.reuse import check_reuse  # noqa: E402
from supermask.multi.sweep import (PAIRED_BASES, PAIRED_NOTE, STATS_NOTE, Cell, Sweep, estimate_text,  # noqa: E402
                             paired_differences, run_sweep, seed_estimates, validate)

METHODS = ("edge-popup", "biprop", "iterand", "edge-popup+iwr", "biprop+iwr", "dense")
# Issue 24's methods, each a column: a method with the keys that make it (at the cell's prune rate p and epochs E).
# Gem-Miner's pruning period scales with the run as IWR's does (its published T 5 of 150 epochs), but is at least 2:
# with T 1 the last round would come after the last epoch, and the published recipe trains 4 epochs after its last;
# multicoat takes C = 3 coats, each keeping half of the one before (the published coats keep 30%, 7.9% and 3.2%).
VARIANTS = {
    "edge-popup-global": lambda p, epochs: {"method": "edge-popup", "prune_scope": "global"},
    "gem-miner": lambda p, epochs: {"method": "gem-miner", "gem_period": max(2, round(5 * epochs / 150))},
    "multicoat": lambda p, epochs: {"method": "multicoat",
                                    "multicoat_prune_rates": [p, 1 - (1 - p) / 2, 1 - (1 - p) / 4]},
    # the published W * m compounds layer by layer without BatchNorm; W * m / C is the option for such networks
    "multicoat-mean": lambda p, epochs: {"method": "multicoat", "multicoat_scale": "mean",
                                         "multicoat_prune_rates": [p, 1 - (1 - p) / 2, 1 - (1 - p) / 4]},
    # Its density is an outcome of the decoupled decay (the paper's 5e-4), not the row's prune rate; on this ReLU
    # network the signed constant (the paper's "he" weights), not ELUS.
    "signed-supermask": lambda p, epochs: {"method": "signed-supermask", "weight_init": "signed-constant",
                                           "weight_decay_mode": "decoupled", "weight_decay": 5e-4},
    # Biprop+IWR as the IWR code's own configs ran it: they leave scale_fan unset (False), plain Kaiming-normal
    # weights, where the plain-Biprop configs scale the fan (docs/fidelity.md D3). Not in any profile: run it with
    # --methods beside the width-0.1 column to see how much of the published gap the init explains.
    "biprop+iwr-unscaled": lambda p, epochs: {"method": "biprop+iwr", "scale_fan": False},
}
# The published column a variant stands for, where it runs a published method under another protocol.
PUBLISHED_AS = {"biprop+iwr-unscaled": "biprop+iwr"}
# The base of each paired difference outside the methods profile: the paper's own comparison, IWR against its base.
TABLE_BASES = {**PAIRED_BASES, "biprop+iwr-unscaled": "biprop"}
# A variant that changes one setting of a published method is also paired with that method: the setting's own effect.
SETTING_BASES = {"biprop+iwr-unscaled": "biprop+iwr"}


def published_figure(model: str, width: float, prune_rate: float, method: str) -> float | None:
    """The published accuracy (%) of a method's cell, a variant taking the column it stands for; None if unpublished."""
    return PUBLISHED.get((model, width, prune_rate), {}).get(PUBLISHED_AS.get(method, method))


def table_differences(rows: list[dict], profile: str) -> list[dict]:
    """The table's paired differences: in the methods profile each method against Edge-Popup; elsewhere the paper's
    comparisons, and each setting variant against the method it changes."""
    if profile == "methods":
        return paired_differences(rows, AXES, METHOD_BASES)
    return paired_differences(rows, AXES, TABLE_BASES) + paired_differences(rows, AXES, SETTING_BASES)


# Methods whose runs do not depend on the prune rate: one run per seed, at the grid's first rate, shown in every row.
ONCE = ("dense", "signed-supermask")
METHOD_BASES = {m: "edge-popup" for m in VARIANTS}  # the methods table's paired differences: each against EP
AXES = ["model", "width", "prune_rate", "epochs"]  # a row of the table; methods are its columns

# Published CIFAR-10 test accuracy (%), 250 epochs, official binaries: {(model, width, prune rate): {method: acc}}.
PUBLISHED: dict[tuple[str, float, float], dict[str, float]] = {
    ("conv2", 1.0, 0.5): {"edge-popup": 79.69, "biprop": 79.56, "iterand": 81.83, "edge-popup+iwr": 81.68, "biprop+iwr": 81.36, "dense": 79.9},
    ("conv2", 1.0, 0.9): {"edge-popup": 64.05, "biprop": 70.1, "iterand": 68.87, "edge-popup+iwr": 70.22, "biprop+iwr": 76.9, "dense": 79.9},
    ("conv4", 1.0, 0.2): {"edge-popup": 77.6, "biprop": 74.71, "iterand": 88.4, "edge-popup+iwr": 88.95, "biprop+iwr": 88.05, "dense": 87.0},
    ("conv4", 1.0, 0.5): {"edge-popup": 86.67, "biprop": 87.42, "iterand": 88.37, "edge-popup+iwr": 88.5, "biprop+iwr": 88.91, "dense": 87.0},
    ("conv4", 1.0, 0.9): {"edge-popup": 74.42, "biprop": 79.0, "iterand": 78.88, "edge-popup+iwr": 79.78, "biprop+iwr": 84.3, "dense": 87.0},
    ("conv4", 1.0, 0.98): {"edge-popup": 35.28, "biprop": 44.0, "iterand": 41.6, "biprop+iwr": 49.38},
    ("conv6", 1.0, 0.2): {"edge-popup": 83.0, "biprop": 78.2, "iterand": 90.58, "edge-popup+iwr": 91.1, "biprop+iwr": 90.2, "dense": 89.0},
    ("conv6", 1.0, 0.9): {"edge-popup": 79.57, "biprop": 82.38, "iterand": 81.22, "edge-popup+iwr": 83.2, "biprop+iwr": 85.5, "dense": 89.0},
    ("conv8", 1.0, 0.9): {"edge-popup": 83.6, "biprop": 84.84, "iterand": 84.73, "edge-popup+iwr": 86.93, "biprop+iwr": 86.4, "dense": 89.41},
    ("resnet18", 1.0, 0.95): {"edge-popup": 92.5, "biprop": 92.62, "iterand": 86.52, "biprop+iwr": 93.46, "dense": 93.03},
    ("resnet18", 1.0, 0.99): {"edge-popup": 81.67, "biprop": 82.6, "iterand": 80.25, "biprop+iwr": 85.3, "dense": 93.03},
    ("conv4", 0.1, 0.5): {"edge-popup": 50.73, "edge-popup+iwr": 59.82, "biprop": 50.4, "biprop+iwr": 59.64, "iterand": 59.3, "dense": 67.26},
    ("conv4", 0.25, 0.5): {"edge-popup": 73.34, "edge-popup+iwr": 78.92, "biprop": 73.23, "biprop+iwr": 78.51, "iterand": 78.91, "dense": 81.13},
}

PROFILES = {
    "cpu": {"models": ["conv4"], "widths": [0.25], "prune_rates": [0.5, 0.9], "seeds": [0], "epochs": 10,
            "methods": list(METHODS)},
    "full": {"models": ["conv2", "conv4", "conv6", "conv8"], "widths": [1.0], "prune_rates": [0.2, 0.5, 0.9, 0.98],
             "seeds": [0, 1, 2], "epochs": PAPER_EPOCHS, "methods": list(METHODS)},
    "vit": {"models": ["vit"], "widths": [0.25], "prune_rates": [0.5, 0.9], "seeds": [0], "epochs": 10,
            "methods": ["edge-popup", "biprop", "edge-popup+iwr", "biprop+iwr", "dense"]},
    # Issue 23: the width-0.1 column of the paper's width figure at its own budget (epochs None: 250 for a mask
    # search, 100 for dense, as the built-in conv4 config says). The headline methods first.
    # IteRand as the IWR paper compared it (its configs redraw once per epoch, r 0.1; docs/fidelity.md D4).
    "width01": {"models": ["conv4"], "widths": [0.1], "prune_rates": [0.5], "seeds": [0, 1, 2], "epochs": None,
                "methods": ["edge-popup", "edge-popup+iwr", "dense", "biprop", "biprop+iwr", "iterand"],
                "method_overrides": {"iterand": {"iterand_every_epochs": 1}}},
    # Issue 24: the strong-ticket methods side by side in the regime they were made for, 10 epochs.
    "methods": {"models": ["conv4"], "widths": [0.25], "prune_rates": [0.9, 0.98], "seeds": [0, 1, 2], "epochs": 10,
                "methods": ["edge-popup", "edge-popup-global", "gem-miner", "multicoat", "multicoat-mean",
                            "signed-supermask", "dense"]},
}
# Config keys that say where a run's files are, not what it computes: a recorded row does not depend on them.
PLACE_KEYS = ("out_dir", "data_dir")


def cell_overrides(model: str, width: float, prune_rate: float, method: str, seed: int, epochs: int | None,
                   data_dir: str | None) -> dict:
    if epochs is None:  # the papers' own budget for the method
        epochs = paper_epochs(model, method != "dense")
    o = {"model": model, "width": width, "prune_rate": prune_rate, "method": method, "epochs": epochs,
         "weight_seed": seed, "score_seed": seed, "data_seed": seed}
    if method in VARIANTS:
        o.update(VARIANTS[method](prune_rate, epochs))
    if data_dir:
        o["data_dir"] = data_dir
    if o["method"].endswith("+iwr") and epochs != PAPER_EPOCHS:
        # The paper's F epochs of 250 become the same fraction of a short run.
        o["iwr_every_fraction"] = min(1.0, paper_schedule(o["method"], model)["iwr_every"] / PAPER_EPOCHS)
    return o


def cell_name(o: dict, label: str | None = None) -> str:
    """A cell's name; `label` names a variant (VARIANTS) whose method key is another method's."""
    return f"{o['model']}-w{o['width']:g}-{label or o['method']}-p{o['prune_rate']:g}-e{o['epochs']}-s{o['weight_seed']}"


def row_of(summary: dict, run_dir: Path) -> dict:
    """A run's row in the committed results: no path of this machine (the dataset as its file name and checksum,
    the run directory relative), and its test accuracy after each epoch (`curve`), which outlives the run
    directory."""
    keys = ("method", "model", "width", "prune_rate", "epochs", "weight_seed", "score_seed", "data_seed", "test_acc",
            "best_test_acc", "seconds", "params_total", "params_kept")
    return {**{k: summary[k] for k in keys}, "dataset_source": Path(summary["dataset_source"]).name,
            "dataset_sha256": summary.get("dataset_sha256"), "out_dir": portable_path(summary["out_dir"]),
            "seed": summary["weight_seed"], "curve": test_curve(run_dir)}


def storage(run_dir: Path) -> dict:
    """A mask search's `.smask` size in bits per masked weight (the whole file: seeds, masks and every other tensor),
    exported to a temporary file."""
    import tempfile

    from supermask.export.smask import export_run

    if read_json(run_dir / "summary.json").get("base_method") == "dense":
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        report = export_run(run_dir, Path(tmp) / "net.smask")
    total = read_json(run_dir / "summary.json")["params_total"]
    return {"smask_bytes": report["bytes"], "smask_bits_per_weight": round(8 * report["bytes"] / total, 4),
            "mask_bits_per_weight": round(8 * report["mask_bytes"] / total, 4)}


def test_curve(run_dir: Path) -> list[float]:
    """Test accuracy after each epoch, from the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["test_acc"] for line in path.read_text().splitlines() if line.strip()]


def markdown(cells: list[dict], differences: list[dict], methods: list[str], papers_budget: bool = False) -> str:
    """The measured table (mean ± 95% interval, n seeds) beside the published figures, then the paired differences.
    With `papers_budget` (each method trained for the papers' own length), dense runs (100 epochs) are shown in the
    row of the mask searches (250), as the papers' tables show them."""
    by_row: dict[tuple, dict[str, dict]] = {}
    for c in cells:
        epochs = paper_epochs(c["model"]) if papers_budget and c["method"] == "dense" else c["epochs"]
        by_row.setdefault((c["model"], c["width"], c["prune_rate"], epochs), {})[c["method"]] = c
    lines = ["| model, width, % pruned, epochs | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for (model, width, p, epochs), by_method in by_row.items():
        entries = []
        for m in methods:
            ours = estimate_text(by_method[m]) if m in by_method else "-"
            if "smask_bits_per_weight" in by_method.get(m, {}):
                ours += (f"; {by_method[m]['kept_percent']:.3g}% kept, "
                         f"{by_method[m]['smask_bits_per_weight']:.3g} bits/weight")
            figure = published_figure(model, width, p, m)
            entries.append(f"{ours} ({figure:.2f})" if figure is not None else ours)
        lines.append(f"| {model}, {width:g}, {100 * p:g}, {epochs} | " + " | ".join(entries) + " |")
    lines += ["", f"Test accuracy (%) measured here: {STATS_NOTE}"]
    if any("smask_bits_per_weight" in c for c in cells):
        lines[-1] += (" Kept: the weights the found networks keep, of the masked ones; bits per weight: the size of "
                      "the cell's `.smask` files (seeds, masks and every other tensor) over its masked weights; both "
                      "the mean over its seeds.")
    if any((model, width, p) in PUBLISHED for model, width, p, _ in by_row):
        lines[-1] += (" The published figure (250 epochs, official CIFAR-10 binaries) in parentheses where the papers "
                      "have the cell.")
    for m in methods:
        if m in PUBLISHED_AS and any(m in by_method for by_method in by_row.values()):
            lines[-1] += f" {m} is {PUBLISHED_AS[m]} as the published code's configs run it, beside that figure."
    unpublished = sorted({model for model, *_ in by_row if not any(key[0] == model for key in PUBLISHED)})
    if unpublished:
        lines[-1] += f" The papers publish no figures for {', '.join(unpublished)}."
    elif not any((model, width, p) in PUBLISHED for model, width, p, _ in by_row):
        lines[-1] += " The papers publish no figures for these settings."
    once = [m for m in ONCE if m in methods]
    if once and len({p for _, _, p, _ in by_row}) > 1:
        lines[-1] += (f" {' and '.join(once).capitalize()} {'do' if len(once) > 1 else 'does'} not take the prune rate "
                      "(dense prunes nothing; a signed supermask's density is an outcome): each row shows the same "
                      "runs.")
    if papers_budget and any(c["method"] == "dense" for c in cells):
        lines[-1] += (" Each method ran the papers' own budget: the mask searches the row's epochs, dense "
                      f"{paper_epochs(cells[0]['model'], masked=False)} epochs (shown in the same row).")
    if differences:
        lines += ["", "| model, width, % pruned, epochs | method - base | difference | verdict |", "|---|---|---|---|"]
        for d in differences:
            lines.append(f"| {d['model']}, {d['width']:g}, {100 * d['prune_rate']:g}, {d['epochs']} | "
                         f"{d['method']} - {d['base']} | {estimate_text(d, sign=True)} | {d['verdict']} |")
        lines += ["", PAIRED_NOTE]
    return "\n".join(lines) + "\n"


def column_plot(cells: list[dict], rows: list[dict], methods: list[str], path: Path) -> None:
    """A table of one (model, width, prune rate): left, each method's mean with its 95% interval (hollow: one
    seed) beside the published figure; right, the test accuracy after each epoch of one seed of each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_method = {c["method"]: c for c in cells}  # one row of the table: a cell per method
    shown = [m for m in methods if m in by_method]
    starred = False  # the first published star drawn carries the legend's one label
    for i, m in enumerate(shown):
        c = by_method[m]
        half = c["ci_half_width"] if c["n"] > 1 else 0.0
        lo, hi = max(0.0, c["mean"] - half), min(100.0, c["mean"] + half)  # an accuracy lies in [0, 100]
        left.errorbar([i], [c["mean"]], yerr=[[c["mean"] - lo], [hi - c["mean"]]], fmt="o", capsize=4, color=f"C{i}",
                      mfc="none" if c["n"] == 1 else f"C{i}")
        published = published_figure(c["model"], c["width"], c["prune_rate"], m)
        if published is not None:
            left.plot([i], [published], marker="*", ms=12, color="k", ls="none",
                      label=None if starred else "published (250 epochs; dense 100)")
            starred = True
    # n on the axis, not in a legend: a legend of every method covers some of their points
    left.set_xticks(range(len(shown)), [f"{m} (n={by_method[m]['n']})" for m in shown], rotation=20, ha="right")
    left.set_ylabel("test accuracy (%)")
    left.set_title("mean and 95% interval over seeds; star: published")
    left.legend(fontsize=7, loc="lower right")
    for i, m in enumerate(shown):
        mine = sorted((r for r in rows if r["method"] == m and r.get("curve")), key=lambda r: r["seed"])
        if mine:
            right.plot(range(1, len(mine[0]["curve"]) + 1), [100 * a for a in mine[0]["curve"]], color=f"C{i}",
                       lw=1, label=f"{m} (seed {mine[0]['seed']})")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    right.set_title("accuracy after each epoch, one seed")
    right.legend(fontsize=7)
    c0 = cells[0]
    fig.suptitle(f"{c0['model']}, width {c0['width']:g}, {100 * c0['prune_rate']:g}% pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recorded_rows(path: Path) -> dict[str, dict]:
    """The rows of an earlier <name>.json by cell name; rows that did not record their config (older files) are
    left out."""
    if not path.is_file():
        return {}
    return {r["cell"]: r for r in read_json(path).get("rows", []) if "cell" in r and "config" in r}


def row_config(cfg) -> dict:
    """What a row records of its cell: the resolved config, without where the files are."""
    return {k: v for k, v in cfg.to_dict().items() if k not in PLACE_KEYS}


def difference(row: dict, cfg) -> str | None:
    """Why a recorded row does not stand for the cell of config `cfg`, or None when it does."""
    try:  # read back like a run's config.yaml: keys added since take their defaults
        then = row_config(recorded_config(row["config"]))
    except ConfigError as e:
        return f"a config this supermask cannot read ({e})"
    now = row_config(cfg)
    keys = [k for k in now if then.get(k) != now[k]]
    return ", ".join(f"{k}={then.get(k)!r} there, {k}={now[k]!r} now" for k in keys) or None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--models", help="comma-separated, overrides the profile's")
    ap.add_argument("--widths", help="comma-separated")
    ap.add_argument("--prune-rates", help="comma-separated fractions removed")
    ap.add_argument("--methods", help=f"comma-separated, some of {', '.join(METHODS)} (default: the profile's)")
    ap.add_argument("--seeds", help="comma-separated")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--data-dir", help="default: $SUPERMASK_DATA")
    ap.add_argument("--base", help="the config every cell starts from (default: the built-in config of its model)")
    ap.add_argument("--runs", default="runs/paper_table", help="where the cells' run directories go")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where <name>.json/md/png go")
    ap.add_argument("--name", help="results file name (default: paper_table_<profile>)")
    ap.add_argument("--threads", type=int, help="torch threads per cell (default: the cores divided by --workers)")
    ap.add_argument("--workers", type=int, default=1, help="cells run at once by local worker processes")
    ap.add_argument("--together", type=int, default=0, metavar="N",
                    help="train up to N seeds of a cell in one process (0: every run alone, the default)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the cells on Ray: auto, local, or a cluster address")
    ap.add_argument("--retrain", action="store_true",
                    help="train again the cells run (or recorded in <name>.json) before with another config")
    args = ap.parse_args(argv)
    prof = dict(PROFILES[args.profile])
    for key, conv in (("models", str), ("widths", float), ("prune_rates", float), ("seeds", int), ("methods", str)):
        given = getattr(args, key)
        if given:
            prof[key] = [conv(v) for v in given.split(",")]
    if args.epochs:
        prof["epochs"] = args.epochs
    methods = prof["methods"]
    unknown = [m for m in methods if m not in METHODS + tuple(VARIANTS)]
    if unknown:
        ap.error(f"unknown method {unknown[0]!r}: expected some of {', '.join(METHODS + tuple(VARIANTS))}")
    name = args.name or f"paper_table_{args.profile}"
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)

    cells, labels = [], {}  # labels: each cell's column (a variant's name where its method key is another's)
    for model in prof["models"]:
        for width in prof["widths"]:
            for p in prof["prune_rates"]:
                for seed in prof["seeds"]:
                    for method in methods:
                        if method in ONCE and p != prof["prune_rates"][0]:
                            continue  # dense prunes nothing: one run stands for every prune rate
                        o = cell_overrides(model, width, p, method, seed, prof["epochs"], args.data_dir)
                        o.update(prof.get("method_overrides", {}).get(method, {}))
                        if args.threads:
                            o["threads"] = args.threads
                        label = method if method in VARIANTS else None
                        cells.append(Cell(cell_name(o, label), o, Path(args.runs) / cell_name(o, label),
                                          base=args.base or model))
                        labels[cells[-1].name] = method
    configs = {c.name: make_config(c.base, {**c.overrides, "out_dir": str(c.out_dir)}) for c in cells}

    # Cells whose run directory is gone (another session) are taken from the rows the results file recorded.
    results = out / f"{name}.json"
    recorded = recorded_rows(results)
    reused, stale = {}, []
    for c in cells:
        if c.name in recorded and not c.finished:
            why = difference(recorded[c.name], configs[c.name])
            if why is None:
                reused[c.name] = recorded[c.name]
            else:
                stale.append((c.name, why))
    if stale and not args.retrain:
        more = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
        raise ConfigError(f"{results} recorded {stale[0][0]}{more} with another config: {stale[0][1]}; pass --retrain "
                          "to train it again, or choose another --name")

    sizes: dict[str, dict] = {}  # each finished cell's .smask size, exported once, not at every save

    def stored_sizes(c: Cell) -> dict:
        if c.name not in sizes:
            sizes[c.name] = storage(c.out_dir)
        return sizes[c.name]

    def save() -> None:
        """The results so far: finished cells, recorded ones, and the recorded rows of cells outside this grid."""
        rows = []
        for c in cells:
            if c.finished:
                rows.append({"cell": c.name, **row_of(read_json(c.out_dir / "summary.json"), c.out_dir),
                             "method": labels[c.name], "config": row_config(configs[c.name]), "machine": machine(),
                             **(stored_sizes(c) if args.profile == "methods" else {})})
            elif c.name in reused:
                rows.append(reused[c.name])
        ours = {c.name for c in cells}
        rows += [r for n, r in recorded.items() if n not in ours]
        # every row of the table shows its dense runs, also when this command ran only other methods
        def rates_of(r: dict) -> set[float]:  # the grid's prune rates, and any other the table holds for this model
            return set(prof["prune_rates"]) | {o["prune_rate"] for o in rows
                                               if (o["model"], o["width"], o["epochs"]) == (r["model"], r["width"], r["epochs"])}

        dense = [{**r, "prune_rate": p} for r in rows if r["method"] in ONCE for p in sorted(rates_of(r))
                 if p != r["prune_rate"]]
        estimates, differences = seed_estimates(rows + dense, AXES), table_differences(rows + dense, args.profile)
        for e in estimates:  # what each method's network costs to store, from its .smask files, and keeps
            mine = [r for r in rows + dense if r["method"] == e["method"] and all(r[k] == e[k] for k in AXES)]
            bits = [r["smask_bits_per_weight"] for r in mine if "smask_bits_per_weight" in r]
            if bits:
                e["smask_bits_per_weight"] = round(sum(bits) / len(bits), 4)
                e["kept_percent"] = round(100 * sum(r["params_kept"] / r["params_total"] for r in mine) / len(mine), 2)
        write_json(results, {"benchmark": "paper_table", "profile": args.profile, "grid": prof, "rows": rows,
                             "cells": estimates, "differences": differences, "machine": machine()})
        if rows:
            order = (*METHODS[:-1], *VARIANTS, "dense")  # dense, the reference, last
            shown = [m for m in order if m in methods or any(r["method"] == m for r in rows)]
            atomic_write_text(out / f"{name}.md", markdown(estimates, differences, shown, prof["epochs"] is None))
            try:
                if len({(c["model"], c["width"], c["prune_rate"]) for c in estimates}) == 1:
                    column_plot(estimates, rows, shown, out / f"{name}.png")
                else:
                    from supermask.analysis.plots import seed_plot

                    seed_plot(estimates, differences, AXES, out / f"{name}.png")
            except (ConfigError, ImportError):  # no matplotlib
                pass

    pending = [c for c in cells if c.name not in reused]
    if not args.retrain:  # refuse run directories of another config before anything is written (run_sweep would too)
        check_reuse([configs[c.name] for c in pending], retrain=False)
    try:
        if pending:
            sweep = Sweep(None, pending, Path(args.runs), workers=args.workers, together=args.together,
                          grid=[*AXES, "method"])
            validate(sweep)
            run_sweep(sweep, ray_address=args.ray, progress=sys.stderr.isatty(), retrain=args.retrain,
                      on_task_end=save)
    finally:  # whatever finished is reported, also when some cells failed
        save()
        if (out / f"{name}.md").is_file():
            print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    try:
        main()
    except SupermaskError as e:  # bad input or failed cells: one line, as the command line reports them
        print(f"paper_table: error: {e}", file=sys.stderr)
        sys.exit(2)
