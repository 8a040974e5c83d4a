"""Sweeps: a grid over config keys, each cell an ordinary run, executed by local worker processes or on a Ray
cluster, then aggregated into one table and plots.

A sweep file (YAML):

    base: conv4                    # a built-in config or a YAML file
    set: {width: 0.25, epochs: 10} # values for every cell
    grid:                          # every combination of these is a cell
      method: [edge-popup, biprop+iwr]
      prune_rate: [0.5, 0.9]
      score_seed: [0, 1, 2]
    out_dir: runs/my_sweep         # cells go to out_dir/cells/<name>, results to out_dir/results.*
    workers: 2                     # local worker processes (default: 1)
    gpus_per_cell: 0.5             # Ray: GPUs (or a fraction) per cell (default 0)
    retries: 2                     # re-runs of a cell whose worker died (default 2)
    together: 8                    # train cells that differ only in seeds in one process, up to 8 at a time
                                   # (true: no limit; default false)

Each cell runs in its own process (`python -m supermask train ... --resume`), so a worker that dies takes only its
cell with it, and the cell is re-run from its last checkpoint; a worker ends with its sweep, even a killed one
(`die_with_parent`), and holds its run directory's lock while it trains (`supermask.lock`). Cells that already
finished are skipped. With `together`, each group of cells that differ only in weight_seed, score_seed and data_seed is one task
(`python -m supermask together GROUP.json`, see `supermask.together`), re-run from the group's checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import atomic_write_text, write_csv, write_json
from .config import make_config
from .errors import ConfigError, SupermaskError

SPEC_KEYS = ("base", "set", "grid", "out_dir", "workers", "gpus_per_cell", "retries", "together")
SEED_KEYS = ("weight_seed", "score_seed", "data_seed")
PARENT_ENV = "SUPERMASK_PARENT_PID"  # set for a worker: the pid of the process it must not outlive


@dataclass
class Cell:
    name: str
    overrides: dict[str, Any]
    out_dir: Path
    base: str | None = None  # the cell's own base config, else the sweep's
    attempts: int = 0
    status: str = "pending"  # pending, running, done, failed
    error: str = ""

    @property
    def finished(self) -> bool:
        return (self.out_dir / "summary.json").is_file()


@dataclass
class Sweep:
    base: str | None
    cells: list[Cell]
    out_dir: Path
    workers: int = 1
    gpus_per_cell: float = 0.0
    retries: int = 2
    fixed: dict[str, Any] = field(default_factory=dict)
    together: int = 0  # largest group of cells trained in one process (0: every cell alone)


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_name(overrides: dict[str, Any], keys: list[str]) -> str:
    return "-".join(f"{k}={_format(overrides[k])}" for k in keys).replace("/", "_") or "cell"


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every cell's config is checked before anything runs."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r}: allowed keys are {', '.join(SPEC_KEYS)}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid must map config keys to non-empty lists of values")
    fixed = spec.get("set") or {}
    out_dir = spec.get("out_dir")
    if not out_dir:
        raise ConfigError(f"{path}: a sweep needs out_dir")
    keys = list(grid)
    cells = []
    for values in itertools.product(*grid.values()):
        overrides = {**fixed, **dict(zip(keys, values))}
        name = cell_name(overrides, keys)
        cells.append(Cell(name, overrides, Path(out_dir) / "cells" / name))
    together = spec.get("together", False)
    if together is True:
        together = len(cells)
    if together is False or together is None:
        together = 0
    if isinstance(together, bool) or not isinstance(together, int) or together < 0:
        raise ConfigError(f"{path}: together must be true, false or a group size >= 1, got {together!r}")
    sweep = Sweep(spec.get("base"), cells, Path(out_dir), int(spec.get("workers", 1)),
                  float(spec.get("gpus_per_cell", 0.0)), int(spec.get("retries", 2)), fixed, together)
    validate(sweep)
    return sweep


def validate(sweep: Sweep) -> None:
    if sweep.workers < 1 or sweep.retries < 0 or sweep.gpus_per_cell < 0:
        raise ConfigError("a sweep needs workers >= 1, retries >= 0 and gpus_per_cell >= 0")
    names = [c.name for c in sweep.cells]
    if len(set(names)) != len(names):
        raise ConfigError("two cells of the sweep have the same name")
    for cell in sweep.cells:
        if "out_dir" in cell.overrides:
            raise ConfigError("out_dir is set by the sweep for each cell; remove it from set/grid")
        make_config(cell.base or sweep.base, {**cell.overrides, "out_dir": str(cell.out_dir)})


def _command(sweep: Sweep, task: list[Cell]) -> list[str]:
    """The process that runs a task: one cell with `train`, or a group of cells with `together`."""
    if len(task) > 1 or sweep.together:
        from .together import write_group_file

        name = _group_name(task)
        group_file = sweep.out_dir / "groups" / f"{name}.json"
        group_file.parent.mkdir(parents=True, exist_ok=True)
        write_group_file(group_file, sweep.out_dir / "groups" / name,
                         [(c.base or sweep.base, {**c.overrides, "out_dir": str(c.out_dir)}) for c in task])
        return [sys.executable, "-m", "supermask", "together", str(group_file), "-q"]

    def arg(k: str, v: Any) -> str:  # as parse_overrides reads it back: YAML scalars, JSON lists, empty for None
        return f"{k}=" if v is None else f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"

    cell = task[0]
    args = [arg(k, v) for k, v in cell.overrides.items()]
    base = [cell.base or sweep.base] if (cell.base or sweep.base) else []
    return [sys.executable, "-m", "supermask", "train", *base, *args, f"out_dir={cell.out_dir}", "--resume", "-q"]


def _group_name(task: list[Cell]) -> str:
    return "group-" + hashlib.sha256("\n".join(str(c.out_dir) for c in task).encode()).hexdigest()[:12]


def tasks(sweep: Sweep, pending: list[Cell]) -> list[list[Cell]]:
    """What runs as one process: each cell alone, or with `together`, groups of cells that differ only in their
    seeds (at most `together` of them). A group interrupted earlier is resumed with exactly its own cells."""
    if not sweep.together:
        return [[c] for c in pending]
    from .together import group_runs  # torch is imported only where a sweep needs it

    by_dir = {str(c.out_dir): c for c in sweep.cells}
    out: list[list[Cell]] = []
    taken: set[str] = set()
    for ckpt in sorted((sweep.out_dir / "groups").glob("group-*/together.safetensors")):
        runs = group_runs(ckpt.parent) or []
        if not all(r in by_dir for r in runs):
            raise ConfigError(f"{ckpt.parent} holds an unfinished group with runs outside this sweep; delete it to start over")
        if runs and not all(r in taken for r in runs):
            out.append([by_dir[r] for r in runs])
            taken.update(runs)
    groups: dict[str, list[Cell]] = {}
    for c in pending:
        if str(c.out_dir) in taken:
            continue
        key = json.dumps([c.base or sweep.base, {k: v for k, v in c.overrides.items() if k not in SEED_KEYS}],
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(c)
    for cells in groups.values():
        out += [cells[i : i + sweep.together] for i in range(0, len(cells), sweep.together)]
    return out


def _env(sweep: Sweep) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // sweep.workers)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_cell_process(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run one cell in its own process, which ends when this one does (see die_with_parent); (exit code, last
    line of stderr)."""
    env = {**env, PARENT_ENV: str(os.getpid())}
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def die_with_parent() -> None:
    """In a worker (PARENT_ENV set): end this process when its parent ends, even by `kill -9`, so no orphan keeps
    training into a cell after its sweep is gone (a restarted sweep would start it again beside it).

    Linux: the kernel's parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL; a run's files are written
    atomically, so a kill at any point leaves its last checkpoint); elsewhere a thread polling the parent's pid.
    """
    parent = os.environ.pop(PARENT_ENV, "")  # not passed on: it names this process's parent only
    if not parent.isdigit():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        def watch() -> None:
            while os.getppid() == int(parent):
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != int(parent):  # the parent ended before the signal was armed
        os._exit(1)


class Progress:
    """The live view: cells done, running and failed, and the time left, as a bar and as status.json."""

    def __init__(self, sweep: Sweep, enabled: bool):
        from tqdm.auto import tqdm

        self.sweep = sweep
        self.lock = threading.Lock()
        self.start = time.time()
        self.bar = tqdm(total=len(sweep.cells), unit="cell", disable=not enabled, dynamic_ncols=True)
        self.bar.update(sum(c.status == "done" for c in sweep.cells))
        self.update()

    def update(self) -> None:
        with self.lock:
            counts = {s: sum(c.status == s for c in self.sweep.cells) for s in ("done", "running", "failed", "pending")}
            self.bar.n = counts["done"]
            self.bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=True)
            write_json(self.sweep.out_dir / "status.json", {
                **counts, "total": len(self.sweep.cells), "elapsed_s": round(time.time() - self.start, 1),
                "eta_s": self.bar.format_dict.get("rate") and round((len(self.sweep.cells) - counts["done"]) / self.bar.format_dict["rate"], 1),
                "cells": {c.name: {"status": c.status, "attempts": c.attempts, "error": c.error} for c in self.sweep.cells}})

    def close(self) -> None:
        self.bar.close()


def _start(task: list[Cell]) -> None:
    for cell in task:
        cell.attempts += 1
        cell.status = "running"


def _end(task: list[Cell], error: str) -> None:
    for cell in task:
        cell.error = "" if cell.finished else error
        cell.status = "done" if cell.finished else "failed"


def _attempt_local(sweep: Sweep, task: list[Cell], progress: Progress) -> None:
    error = ""
    while task[0].attempts <= sweep.retries and not all(c.finished for c in task):
        _start(task)
        progress.update()
        code, last = run_cell_process(_command(sweep, task), _env(sweep))
        error = "" if code == 0 else (last or f"worker exited with {code}")
        if code == 2:  # bad input: re-running cannot help
            break
    _end(task, error)
    progress.update()


def _run_ray(sweep: Sweep, pending: list[list[Cell]], progress: Progress, address: str) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'supermask[ray]'") from None
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False,
             include_dashboard=False)
    remote = ray.remote(num_cpus=max(1, (os.cpu_count() or 1) // sweep.workers) if address == "local" else 1,
                        num_gpus=sweep.gpus_per_cell, max_retries=sweep.retries)(run_cell_process)
    try:
        futures = {}
        for task in pending:
            _start(task)
            futures[remote.remote(_command(sweep, task), _env(sweep))] = task
        progress.update()
        waiting = list(futures)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            task = futures[done[0]]
            try:
                code, last = ray.get(done[0])
            except Exception as e:  # the worker died more often than retries allow
                code, last = -1, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            _end(task, "" if code == 0 else last or f"worker exited with {code}")
            progress.update()
    finally:
        if address == "local":
            ray.shutdown()


def run_sweep(sweep: Sweep, *, ray_address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every unfinished cell, then aggregate; returns the aggregate (and raises if cells failed)."""
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    for cell in sweep.cells:
        cell.status = "done" if cell.finished else "pending"
    pending = tasks(sweep, [c for c in sweep.cells if c.status == "pending"])
    view = Progress(sweep, progress)
    try:
        if ray_address:
            _run_ray(sweep, pending, view, ray_address)
        else:
            with ThreadPoolExecutor(max_workers=sweep.workers) as pool:
                for future in as_completed([pool.submit(_attempt_local, sweep, t, view) for t in pending]):
                    future.result()
    finally:
        view.close()
    result = aggregate(sweep)
    failed = [c for c in sweep.cells if c.status == "failed"]
    if failed:
        raise SupermaskError(f"{len(failed)} of {len(sweep.cells)} cells failed, first {failed[0].name}: "
                             f"{failed[0].error or 'see its run directory'}; run the sweep again to retry them")
    return result


def aggregate(sweep: Sweep) -> dict[str, Any]:
    """results.csv (a row per finished cell), results.md (mean ± std over seeds) and results.png."""
    rows = []
    for cell in sweep.cells:
        if cell.finished:
            s = json.loads((cell.out_dir / "summary.json").read_text())
            rows.append({"cell": cell.name, "method": s["method"], "model": s["model"], "width": s["width"],
                         "prune_rate": s["prune_rate"], "weight_seed": s["weight_seed"], "score_seed": s["score_seed"],
                         "data_seed": s["data_seed"], "epochs": s["epochs"], "test_acc": s["test_acc"],
                         "best_test_acc": s["best_test_acc"], "seconds": s["seconds"]})
    if rows:
        write_csv(sweep.out_dir / "results.csv", rows, list(rows[0]))
        atomic_write_text(sweep.out_dir / "results.md", results_table(rows))
        results_plot(rows, sweep.out_dir / "results.png")
    return {"cells": len(sweep.cells), "finished": len(rows), "rows": rows}


def results_table(rows: list[dict]) -> str:
    """Markdown: a row per (model, width, prune rate, epochs), a column per method, mean ± std over seeds."""
    methods = sorted({r["method"] for r in rows})
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["width"], r["prune_rate"], r["epochs"]), {}).setdefault(r["method"], []).append(100 * r["test_acc"])
    lines = ["| model | width | % pruned | epochs | " + " | ".join(methods) + " |", "|---" * (4 + len(methods)) + "|"]
    for (model, width, p, epochs), by in sorted(groups.items()):
        cells = []
        for m in methods:
            accs = by.get(m, [])
            cells.append("-" if not accs else f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""))
        lines.append(f"| {model} | {width:g} | {100 * p:g} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nTest accuracy (%), mean ± standard deviation over the seeds of each cell group.\n"


def results_plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["width"], r["epochs"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (model, width, epochs) in zip(axes[0], groups):
        for method in sorted({r["method"] for r in rows}):
            pts: dict[float, list[float]] = {}
            for r in rows:
                if (r["model"], r["width"], r["epochs"], r["method"]) == (model, width, epochs, method):
                    pts.setdefault(r["prune_rate"], []).append(100 * r["test_acc"])
            if pts:
                xs = sorted(pts)
                ax.plot([100 * x for x in xs], [statistics.mean(pts[x]) for x in xs], marker="o", label=method)
        ax.set(title=f"{model}, width {width:g}, {epochs} epochs", xlabel="% of weights pruned", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
