""".smask sizes of finished runs beside dense float32 storage and the entropy bound of their masks, with a check
that each rebuilt network gives exactly the run's outputs.

    python benchmarks/export_sizes.py RUN_DIR [RUN_DIR ...]

Writes benchmarks/results/export_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, portable_path  # noqa: E402

from supermask.data import normalize  # noqa: E402
from supermask.export.smask import export_run, load  # noqa: E402
from supermask.run.train import load_run_model  # noqa: E402


def row_of(run_dir: str | Path, summary: dict, report: dict, exact: bool) -> dict:
    """A run's row in the committed results, without this machine's paths (the .smask file went to a temporary
    folder: only its name is kept)."""
    return {"run": portable_path(run_dir), "method": summary["method"], "model": summary["model"],
            "width": summary["width"], "prune_rate": summary["prune_rate"], **report,
            "file": Path(report["file"]).name, "outputs_equal": exact}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_sizes.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_dir in args.runs:
            path = Path(tmp) / "net.smask"
            report = export_run(run_dir, path)
            cfg, ds, model, _ = load_run_model(run_dir, device="cpu")
            x = normalize(ds.test_x[:256], ds.mean, ds.std)
            with torch.no_grad():
                exact = torch.equal(model.eval()(x), load(path)(x))
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            rows.append(row_of(run_dir, summary, report, exact))
            print(f"{summary['method']:15s} {report['bytes']:>9,} bytes  (dense float32 {report['dense_float32_bytes']:,}, "
                  f"{report['compression']}x; masks {report['mask_bytes']:,} = {report['mask_vs_entropy']}x entropy "
                  f"{report['entropy_bytes']:,.0f}; other {report['overhead_bytes']:,})  outputs equal: {exact}")
    Path(args.out).write_text(json.dumps({"benchmark": "export_sizes", "rows": rows, "machine": machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
