"""Random sources smaller than the model (issue 25): how small can weight_source=shared:N get before accuracy falls?

    SUPERMASK_DATA=../shared/datasets python benchmarks/shared_source.py --threads 1     # about 6 min a cell

Conv-4 at width 0.25 on the CIFAR-10 copy, 10 epochs (the CPU table's setting), Edge-Popup and Biprop at 50%
pruned. Each masked tensor's random weights come from one vector of N values (see `supermask.core.init`), for N
the model's masked weights, 10%, 1% and 0.1% of them, beside `full` (a fresh draw per weight); each seed sets the
weight, score and data seeds together, so a seed's cells differ only in the source. The cells run on
`supermask.multi.sweep` as paper_table.py's do (a finished cell is reused, a killed one resumed) and the rows, with
their resolved configs, are rewritten to benchmarks/results/shared_source_cpu.json after every cell, so a later
session resumes where this one stopped (`--retrain` for cells recorded with another config). Writes .md (mean ±
95% interval per N, and each N's paired difference from full) and .png (accuracy against N).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_table  # noqa: E402
from common import machine  # noqa: E402

from supermask.errors import ConfigError, SupermaskError  # noqa: E402
from supermask.multi.stats import estimate, paired_difference, verdict  # noqa: E402
from supermask.multi.sweep import Cell, Sweep, run_sweep, validate  # noqa: E402
from supermask.run.checkpoint import atomic_write_text, read_json, write_json  # noqa: E402
from supermask.run.config import make_config  # noqa: E402

FRACTIONS = (1.0, 0.1, 0.01, 0.001)  # of the model's masked weights
BASE = {"model": "conv4", "width": 0.25, "prune_rate": 0.5, "epochs": 10}


def masked_weights(model: str, width: float) -> int:
    """How many weights a mask search over the model draws (every masked tensor), for 32-pixel RGB inputs."""
    import supermask

    net = supermask.convert(supermask.build_model(model, width=width), "edge-popup", 0.5)
    return sum(p.scores.numel() for _, _, p in supermask.masked_layers(net))


def sources(total: int) -> list[str]:
    return ["full", *(f"shared:{max(1, round(f * total))}" for f in FRACTIONS)]


def cell_name(o: dict) -> str:
    return f"{o['model']}-w{o['width']:g}-{o['method']}-p{o['prune_rate']:g}-e{o['epochs']}-{o['weight_source'].replace(':', '')}-s{o['weight_seed']}"


def source_order(rows: list[dict]) -> list[str]:
    """full first, then shared:N from the largest N down."""
    present = {r["weight_source"] for r in rows}
    return sorted(present, key=lambda s: float("-inf") if s == "full" else -int(s.split(":")[1]))


def markdown(rows: list[dict], total: int) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    order = source_order(rows)
    by = {(r["method"], r["weight_source"]): {} for r in rows}
    for r in rows:
        by[(r["method"], r["weight_source"])][r["seed"]] = 100 * r["test_acc"]
    lines = [f"| source | N / weights | {' | '.join(methods)} |", "|---|---|" + "---|" * len(methods)]
    for source in order:
        if not any((m, source) in by for m in methods):
            continue
        share = "1 each" if source == "full" else f"{int(source.split(':')[1]) / total:.3g}"
        cells = [estimate(list(by[(m, source)].values())).text() if (m, source) in by else "-" for m in methods]
        lines.append(f"| {source} | {share} | {' | '.join(cells)} |")
    lines += ["", "| method | source - full | difference | verdict |", "|---|---|---|---|"]
    for m in methods:
        for source in order[1:]:
            if (m, source) in by and (m, "full") in by:
                d = paired_difference(by[(m, source)], by[(m, "full")])
                if d is not None:
                    lines.append(f"| {m} | {source} - full | {d.text(sign=True)} | {verdict(d)} |")
    lines += ["", f"Conv-4 at width 0.25 ({total:,} masked weights), CIFAR-10 JPEG copy, 10 epochs, 50% pruned. Test "
              f"accuracy (%): {paper_table.STATS_NOTE} {paper_table.PAIRED_NOTE}"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], total: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rows)):
        xs, means, halves = [], [], []
        for source in source_order(rows):
            accs = [100 * r["test_acc"] for r in rows if r["method"] == m and r["weight_source"] == source]
            if accs:
                e = estimate(accs)
                xs.append(total if source == "full" else int(source.split(":")[1]))
                means.append(e.mean)
                halves.append(e.half_width or 0.0)
        ax.errorbar(xs, means, yerr=halves, marker="o", capsize=3, color=f"C{i}", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("N, random values the weights are drawn from (log; the rightmost: full, one per weight)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Conv-4 w0.25, {total:,} masked weights, 50% pruned, 10 epochs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="edge-popup,biprop")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sources", help="comma-separated, some of full and shared:N (default: full and the 4 fractions)")
    ap.add_argument("--threads", type=int, help="torch threads per cell")
    ap.add_argument("--base", default="conv4", help="the config every cell starts from (default: conv4, CIFAR-10)")
    ap.add_argument("--epochs", type=int, default=BASE["epochs"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data-dir", help="default: $SUPERMASK_DATA")
    ap.add_argument("--runs", default="runs/shared_source")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="shared_source_cpu")
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args(argv)
    total = masked_weights(BASE["model"], BASE["width"])
    chosen = args.sources.split(",") if args.sources else sources(total)
    cells = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            for source in chosen:
                o = {**BASE, "epochs": args.epochs, "method": method, "weight_source": source, "weight_seed": seed, "score_seed": seed,
                     "data_seed": seed}
                if args.threads:
                    o["threads"] = args.threads
                if args.data_dir:
                    o["data_dir"] = args.data_dir
                cells.append(Cell(cell_name(o), o, Path(args.runs) / cell_name(o), base=args.base))
    configs = {c.name: make_config(c.base, {**c.overrides, "out_dir": str(c.out_dir)}) for c in cells}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results = out / f"{args.name}.json"
    recorded = paper_table.recorded_rows(results)
    reused = {c.name: recorded[c.name] for c in cells if c.name in recorded and not c.finished
              and paper_table.difference(recorded[c.name], configs[c.name]) is None}
    stale = [c.name for c in cells if c.name in recorded and c.name not in reused and not c.finished]
    if stale and not args.retrain:
        raise ConfigError(f"{results} recorded {stale[0]} with another config; pass --retrain or choose another --name")

    def save() -> None:
        rows = [{"cell": c.name, **paper_table.row_of(read_json(c.out_dir / "summary.json"), c.out_dir),
                 "weight_source": configs[c.name].weight_source, "config": paper_table.row_config(configs[c.name]),
                 "machine": machine()} if c.finished else reused[c.name]
                for c in cells if c.finished or c.name in reused]
        ours = {c.name for c in cells}
        rows += [r for n, r in recorded.items() if n not in ours]
        write_json(results, {"benchmark": "shared_source", "masked_weights": total, "rows": rows, "machine": machine()})
        if rows:
            atomic_write_text(out / f"{args.name}.md", markdown(rows, total))
            try:
                plot(rows, total, out / f"{args.name}.png")
            except ImportError:
                pass

    pending = [c for c in cells if c.name not in reused]
    try:
        if pending:
            sweep = Sweep(None, pending, Path(args.runs), workers=args.workers, grid=["method", "weight_source"])
            validate(sweep)
            run_sweep(sweep, progress=sys.stderr.isatty(), retrain=args.retrain, on_task_end=save)
    finally:
        save()
        if (out / f"{args.name}.md").is_file():
            print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    try:
        main()
    except SupermaskError as e:
        print(f"shared_source: error: {e}", file=sys.stderr)
        sys.exit(2)
