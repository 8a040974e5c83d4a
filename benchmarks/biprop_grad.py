"""Biprop's two score gradients side by side: the published one (biprop_grad=weight, the default) against the one
supermask used before (biprop_grad=alpha), paired over the same seeds (weights, scores and data alike).

    python benchmarks/biprop_grad.py      # reads the two tables below, writes biprop_grad_cpu.{json,md}

The alpha rows are the 3-seed CPU table as it stood before the change (`paper_table_cpu_biprop_alpha.json`, a
frozen copy); the weight rows are the same cells trained again with the published gradient, written into
`paper_table_cpu.json` by
    SUPERMASK_DATA=../shared/datasets python benchmarks/paper_table.py --profile cpu --methods biprop,biprop+iwr \\
        --seeds 0,1,2 --threads 1 --runs runs/paper_table_cpu --retrain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from supermask.run.checkpoint import atomic_write_text, read_json, write_json  # noqa: E402
from supermask.multi.stats import estimate, paired_difference, verdict  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("biprop", "biprop+iwr")


def accuracies(rows: list[dict], grad: str) -> dict[tuple, dict[int, float]]:
    """{(method, prune rate): {seed: test accuracy in %}} of the rows made with the given gradient."""
    out: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["method"] in METHODS and (r["config"].get("biprop_grad") or "alpha") == grad:
            out.setdefault((r["method"], r["prune_rate"]), {})[r["seed"]] = 100 * r["test_acc"]
    return out


def compare(alpha_rows: list[dict], weight_rows: list[dict]) -> list[dict]:
    alpha, weight = accuracies(alpha_rows, "alpha"), accuracies(weight_rows, "weight")
    out = []
    for key in sorted(set(alpha) & set(weight)):
        diff = paired_difference(weight[key], alpha[key])
        if diff is None:
            continue
        seeds = sorted(set(weight[key]) & set(alpha[key]))
        out.append({"method": key[0], "prune_rate": key[1], "seeds": seeds,
                    "weight": estimate([weight[key][s] for s in seeds]).to_dict(),
                    "alpha": estimate([alpha[key][s] for s in seeds]).to_dict(),
                    "per_seed": {s: round(weight[key][s] - alpha[key][s], 2) for s in seeds},
                    "difference": diff.to_dict(), "verdict": verdict(diff)})
    return out


def markdown(entries: list[dict]) -> str:
    def text(e: dict, sign: bool = False) -> str:
        mean = f"{e['mean']:+.2f}" if sign else f"{e['mean']:.2f}"
        return mean if e["ci_half_width"] is None else f"{mean} ± {e['ci_half_width']:.2f}"

    lines = ["| method | % pruned | published gradient (weight) | old gradient (alpha) | weight - alpha | per seed | verdict |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        per_seed = ", ".join(f"{d:+.2f}" for d in e["per_seed"].values())
        lines.append(f"| {e['method']} | {100 * e['prune_rate']:g} | {text(e['weight'])} | {text(e['alpha'])} | "
                     f"{text(e['difference'], sign=True)} (n={e['difference']['n']}) | {per_seed} | {e['verdict']} |")
    lines += ["", "Conv-4 at width 0.25 on the CIFAR-10 JPEG copy, 10 epochs. Test accuracy (%): mean ± half-width of "
              "the 95% interval (Student t) over the seeds both ran; the difference is paired by seed (the same "
              "weights, scores and data), ahead or behind when its interval excludes 0."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", default=str(RESULTS / "paper_table_cpu_biprop_alpha.json"))
    ap.add_argument("--weight", default=str(RESULTS / "paper_table_cpu.json"))
    ap.add_argument("--name", default="biprop_grad_cpu")
    args = ap.parse_args(argv)
    entries = compare(read_json(Path(args.alpha))["rows"], read_json(Path(args.weight))["rows"])
    write_json(RESULTS / f"{args.name}.json", {"benchmark": "biprop_grad", "entries": entries, "machine": machine()})
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(entries))
    print(markdown(entries))


if __name__ == "__main__":
    main()
