"""How fast the command line starts: `supermask --help` and `import supermask`, side by side with another checkout.

    python benchmarks/startup.py                          # this tree
    python benchmarks/startup.py --before /tmp/old-main   # and a checkout of an earlier commit, alternately

Each command runs --repeats times, alternating between the trees so the machine's load falls on both alike; the
median wall time is kept, and `python -X importtime` gives the cumulative import time of `supermask` and whether
torch was imported. Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine  # noqa: E402

COMMANDS = {"help": ["-m", "supermask", "--help"], "import": ["-c", "import supermask"],
            "train --help": ["-m", "supermask", "train", "--help"]}


def run(src: Path, args: list[str], importtime: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, *args], env=env, capture_output=True, text=True, check=True)


def imports(src: Path, args: list[str]) -> dict:
    """Cumulative microseconds of `supermask`'s import, and whether torch was imported."""
    lines = run(src, args, importtime=True).stderr.splitlines()
    rows = [line.split("|") for line in lines if line.startswith("import time:") and "|" in line]
    cumulative = {r[2].strip(): int(r[1]) for r in rows if r[1].strip().isdigit()}
    return {"supermask_import_ms": cumulative.get("supermask", 0) / 1000, "imports_torch": "torch" in cumulative}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="a checkout of another commit to time beside this one")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    trees = {"this": REPO / "src"}
    if args.before:
        trees["before"] = Path(args.before).resolve() / "src"
    out = {}
    for name, argv_ in COMMANDS.items():
        times: dict[str, list[float]] = {t: [] for t in trees}
        for _ in range(args.repeats):
            for tree, src in trees.items():  # alternately
                start = time.perf_counter()
                run(src, argv_)
                times[tree].append(time.perf_counter() - start)
        out[name] = {tree: {"median_s": round(statistics.median(ts), 3), **imports(trees[tree], argv_)}
                     for tree, ts in times.items()}
        print(name, out[name])
    from supermask.run.checkpoint import write_json

    write_json(REPO / "benchmarks" / "results" / "startup.json",
               {"benchmark": "startup", "repeats": args.repeats, "results": out, "machine": machine()})


if __name__ == "__main__":
    main()
