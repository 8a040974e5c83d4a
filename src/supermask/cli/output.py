"""What several commands print or write the same way."""

from __future__ import annotations

from pathlib import Path

def print_landscape(summary: dict) -> None:
    from supermask.analysis.landscape import TOTAL

    for key, layers in summary["by_method_pair"].items():
        t = layers[TOTAL]
        print(f"{key}: {t['pairs']} pairs, whole-mask Jaccard {t['jaccard']:.3f} "
              f"(min {t['jaccard_min']:.3f}, max {t['jaccard_max']:.3f}; chance {t['chance_jaccard']:.3f}), "
              f"matching {t['matching']:.3f} (chance {t['chance_matching']:.3f})")


def save_result(out_dir: str, stem: str, result: dict, plot) -> Path:
    """OUT_DIR/<stem>.json and its plot OUT_DIR/<stem>.png; returns the folder."""
    from supermask.run.checkpoint import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    plot(result, out / f"{stem}.png")
    return out
