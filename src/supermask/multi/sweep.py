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
    gpus_per_cell: 0.5             # Ray: GPUs (or a fraction) per cell (default 0; local workers warn of it)
    retries: 2                     # re-runs of a cell whose worker died (default 2)
    together: 8                    # train cells that differ only in seeds in one process, up to 8 at a time
                                   # (true: no limit; default false); cells `together` refuses run alone

Each cell runs in its own process (`python -m supermask train ... --resume`), so a worker that dies takes only its
cell with it, and the cell is re-run from its last checkpoint; a worker ends with its sweep, even a killed one
(`die_with_parent`), and holds its run directory's lock while it trains (`supermask.run.lock`). Cells that already
finished are skipped; a cell run before with another config (say `set: {epochs: 4}` after 3) is refused, or deleted
and re-run with `--retrain`. With `together`, each group of cells that differ only in weight_seed, score_seed and
data_seed is one task (`python -m supermask together GROUP.json`, see `supermask.multi.together`), re-run from the group's checkpoint.

Grid and set values are read as the config's field types (YAML reads `5e-3` as text) before cells are named; two
grid values or cells that resolve to the same config are refused. A seed a cell's method does not use (dense draws
no scores) is no replicate: such cells run once, and the table says so. The sweep holds `out_dir`'s lock
(`supermask.run.lock`) while it runs, so a second sweep on the same folder is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from supermask.errors import ConfigError, SupermaskError
from supermask.multi.reuse import check_reuse, drop_groups
from supermask.multi.worker import PARENT_ENV
from supermask.multi.stats import Estimate, estimate, paired_difference, verdict
from supermask.run.checkpoint import atomic_write_text, write_csv, write_json
from supermask.run.config import FIELDS, Config, _coerce, make_config
from supermask.run.lock import run_lock
from supermask.run.progress import is_live, log_line
from supermask.run.files import SUMMARY

SPEC_KEYS = ("base", "set", "grid", "out_dir", "workers", "gpus_per_cell", "retries", "together")
SEED_KEYS = ("weight_seed", "score_seed", "data_seed")
SEED_COLUMNS = (*SEED_KEYS, "seed")  # "seed": one axis that sets all three (benchmarks/paper_table.py)
# The columns every row of results.csv has, from the run's summary.
ROW_KEYS = ("method", "model", "width", "prune_rate", "epochs", "weight_seed", "score_seed", "data_seed", "test_acc",
            "best_test_acc", "seconds")
STEP_KEYS = ("iwr_steps", "iterand_steps")  # steps the run's schedules fired (summary.json); empty for older runs
NO_STEP = "no step fired"
# A method and the base it is compared with on the same seeds.
PAIRED_BASES = {"edge-popup+iwr": "edge-popup", "biprop+iwr": "biprop", "iterand": "edge-popup"}


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
        return (self.out_dir / SUMMARY).is_file()


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
    grid: list[str] = field(default_factory=list)  # the keys the grid varies
    # method -> the seed keys it does not use that the grid varied: its cells ran once (filled by validate)
    run_once: dict[str, list[str]] = field(default_factory=dict)

    def axes(self) -> list[str]:
        """What a table splits by: the grid keys other than seeds (else whatever varies across cells)."""
        keys = self.grid or list(dict.fromkeys(k for c in self.cells for k in c.overrides
                                               if len({json.dumps(d.overrides.get(k), default=str) for d in self.cells}) > 1))
        return [k for k in keys if k not in SEED_COLUMNS]


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_name(overrides: dict[str, Any], keys: list[str]) -> str:
    return "-".join(f"{k}={_format(overrides[k])}" for k in keys).replace("/", "_") or "cell"


def _typed(key: str, value: Any) -> Any:
    """A grid or set value as its config field's type (YAML 1.1 reads `5e-3` as text), so cells are named, sorted
    and compared by value; an unknown key is left for make_config to refuse by name."""
    return _coerce(key, value) if key in FIELDS else value


def _typed_values(path: Path, key: str, values: list) -> list:
    """A grid key's values as their field's type; two values that are the same (0.1 and 1e-1) are refused."""
    typed = [_typed(key, v) for v in values]
    for j, value in enumerate(typed):
        if value in typed[:j]:
            i = typed.index(value)
            raise ConfigError(f"{path}: grid {key} lists {values[i]} and {values[j]}, both {_format(value)}: "
                              "give each value once")
    return typed


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every cell's config is checked before anything runs."""
    import math

    from supermask.run.config import read_text_file

    path = Path(path)
    try:
        spec = yaml.safe_load(read_text_file(path, "sweep file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r}: allowed keys are {', '.join(SPEC_KEYS)}")

    def number(key: str, default, whole: bool, low: float):
        value = spec.get(key, default)
        kinds = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < low:
            raise ConfigError(f"{path}: {key} must be a {'whole ' if whole else ''}number >= {low:g}, got {value!r}")
        return value

    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid must map config keys to non-empty lists of values")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set must map config keys to values, got {fixed!r}")
    grid = {k: _typed_values(path, k, v) for k, v in grid.items()}
    fixed = {k: _typed(k, v) for k, v in fixed.items()}
    base = spec.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a built-in config name or a YAML file, got {base!r}")
    out_dir = spec.get("out_dir")
    if not out_dir or not isinstance(out_dir, str):
        raise ConfigError(f"{path}: a sweep needs out_dir, a folder path")
    existing = next(p for p in (Path(out_dir), *Path(out_dir).parents) if p.exists())  # "." or "/" at worst
    if not existing.is_dir():
        raise ConfigError(f"{path}: out_dir {out_dir} cannot be a folder: {existing} is a file")
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
    sweep = Sweep(base, cells, Path(out_dir), number("workers", 1, True, 1), float(number("gpus_per_cell", 0.0, False, 0)),
                  number("retries", 2, True, 0), fixed, together, keys)
    validate(sweep)
    return sweep


def validate(sweep: Sweep) -> None:
    """Check every cell's config; refuse two cells of one config, and keep one of cells that differ only in seeds
    their method does not use (recorded in `sweep.run_once`)."""
    if sweep.workers < 1 or sweep.retries < 0 or sweep.gpus_per_cell < 0:
        raise ConfigError("a sweep needs workers >= 1, retries >= 0 and gpus_per_cell >= 0")
    named: dict[str, Cell] = {}
    for cell in sweep.cells:
        if cell.name in named:
            a, b = ({k: c.overrides[k] for k in sweep.grid} for c in (named[cell.name], cell))
            raise ConfigError(f"two cells of the sweep have the same name {cell.name!r}: {a} and {b} (a name keeps 6 "
                              "significant digits and writes / as _): give values that differ in their names")
        named[cell.name] = cell
    kept: dict[str, tuple[Cell, dict]] = {}  # what a cell computes -> the first cell that computes it
    for cell in list(sweep.cells):
        if "out_dir" in cell.overrides:
            raise ConfigError("out_dir is set by the sweep for each cell; remove it from set/grid")
        cfg = cell_config(sweep, cell)
        full = {k: v for k, v in cfg.to_dict().items() if k != "out_dir"}
        unused = unused_seeds(cfg)
        key = json.dumps({**full, **dict.fromkeys(unused)}, sort_keys=True, default=str)
        if key not in kept:
            kept[key] = (cell, full)
            continue
        first, first_full = kept[key]
        if first_full == full:
            raise ConfigError(f"cells {first.name} and {cell.name} resolve to the same config: give each setting once")
        # Same weights, data and schedule: a replicate would repeat the first cell's run exactly.
        sweep.cells.remove(cell)
        differ = [k for k in unused if first_full[k] != full[k]]
        sweep.run_once[cfg.label] = sorted({*sweep.run_once.get(cfg.label, []), *differ})


def unused_seeds(cfg: Config) -> tuple[str, ...]:
    """The seeds a run of `cfg` draws nothing from: dense has no scores; weights loaded by init_from draw nothing
    from weight_seed unless IteRand redraws them."""
    unused = () if cfg.masked else ("score_seed",)
    if cfg.init_from is not None and cfg.iterand_every_steps is None and cfg.iterand_every_epochs is None:
        unused += ("weight_seed",)
    return unused


def cell_config(sweep: Sweep, cell: Cell) -> Config:
    return make_config(cell.base or sweep.base, {**cell.overrides, "out_dir": str(cell.out_dir)})


def _command(sweep: Sweep, task: list[Cell]) -> list[str]:
    """The process that runs a task: one cell with `train`, or a group of cells with `together`."""
    if len(task) > 1 or (sweep.together and _groupable(sweep, task[0])):
        from supermask.multi.together import write_group_file

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


def _groupable(sweep: Sweep, cell: Cell) -> bool:
    """Whether `supermask together` takes the cell (the cells it refuses: dense, amp, compile, logger,
    checkpoint_every_steps, streamed data, run alone)."""
    from supermask.multi.together import check_group

    try:
        check_group([cell_config(sweep, cell)])
    except ConfigError:
        return False
    return True


def _group_name(task: list[Cell]) -> str:
    return "group-" + hashlib.sha256("\n".join(str(c.out_dir) for c in task).encode()).hexdigest()[:12]


def tasks(sweep: Sweep, pending: list[Cell]) -> list[list[Cell]]:
    """What runs as one process: each cell alone, or with `together`, groups of cells that differ only in their
    seeds (at most `together` of them); cells that `together` refuses (dense, amp, compile) run alone. A group
    interrupted earlier is resumed with exactly its own cells."""
    if not sweep.together:
        return [[c] for c in pending]
    from supermask.multi.together import group_runs  # torch is imported only where a sweep needs it

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
        if not _groupable(sweep, c):
            out.append([c])
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


class Progress:
    """The live view: cells done, running and failed, and the time left, as a bar on a terminal, else as a line
    per cell that ends (see supermask.run.progress), and as status.json."""

    def __init__(self, sweep: Sweep, enabled: bool):
        from tqdm.auto import tqdm

        self.sweep = sweep
        self.enabled, self.live = enabled, is_live(enabled)
        self.lock = threading.Lock()
        self.start = time.time()
        self.seen = {c.name: c.status for c in sweep.cells}  # as last shown: a cell that ends is logged once
        self.ended = 0  # cells ended since the start: the pace the time left is estimated from
        self.bar = tqdm(total=len(sweep.cells), unit="cell", disable=not self.live, dynamic_ncols=True)
        self.bar.update(sum(c.status == "done" for c in sweep.cells))
        self.update()

    def update(self) -> None:
        with self.lock:
            cells = self.sweep.cells
            counts = {s: sum(c.status == s for c in cells) for s in ("done", "running", "failed", "pending")}
            ended = [c for c in cells if c.status in ("done", "failed") and self.seen[c.name] != c.status]
            self.seen = {c.name: c.status for c in cells}
            self.ended += len(ended)
            left = counts["running"] + counts["pending"]
            eta = round((time.time() - self.start) / self.ended * left, 1) if self.ended else None
            self.bar.n = counts["done"]
            self.bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=True)
            if self.enabled and not self.live:
                tally = {s: counts[s] - sum(c.status == s for c in ended) for s in ("done", "failed")}
                for c in ended:
                    tally[c.status] += 1
                    result = (f"done, test acc {json.loads((c.out_dir / 'summary.json').read_text())['test_acc']:.4f}"
                              if c.status == "done" else f"failed ({c.error or 'see its run directory'})")
                    log_line(f"[{tally['done'] + tally['failed']}/{len(cells)}] {c.name}: {result}; "
                             f"{tally['done']} done, {tally['failed']} failed, ETA {self.bar.format_interval(eta)}")
            write_json(self.sweep.out_dir / "status.json", {
                **counts, "total": len(cells), "elapsed_s": round(time.time() - self.start, 1), "eta_s": eta,
                "cells": {c.name: {"status": c.status, "attempts": c.attempts, "error": c.error} for c in cells}})

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


def _run_ray(sweep: Sweep, pending: list[list[Cell]], progress: Progress, address: str,
             on_task_end: Callable[[], None]) -> None:
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
            on_task_end()
    finally:
        if address == "local":
            ray.shutdown()


def run_sweep(sweep: Sweep, *, ray_address: str | None = None, progress: bool = True,
              retrain: bool = False, on_task_end: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Run every unfinished cell, then aggregate; returns the aggregate (and raises if cells failed). A cell run
    before with another config is refused, or with `retrain` deleted and run again. `on_task_end` is called in
    this thread after each task ends (finished or failed), e.g. to save what has finished so far. The sweep holds
    out_dir's lock throughout: a second sweep on the same folder would mark this one's running cells failed."""
    # A new out_dir holds no cells, so check_reuse cannot refuse after the lock has created the folder.
    with run_lock(sweep.out_dir):
        return _run_locked(sweep, ray_address, progress, retrain, on_task_end)


def _run_locked(sweep: Sweep, ray_address: str | None, progress: bool, retrain: bool,
                on_task_end: Callable[[], None]) -> dict[str, Any]:
    deleted = check_reuse([cell_config(sweep, c) for c in sweep.cells], retrain=retrain)
    if deleted:
        drop_groups(sorted((sweep.out_dir / "groups").glob("group-*")), deleted)
    for cell in sweep.cells:
        cell.status = "done" if cell.finished else "pending"
    pending = tasks(sweep, [c for c in sweep.cells if c.status == "pending"])
    view = Progress(sweep, progress)
    try:
        if ray_address:
            _run_ray(sweep, pending, view, ray_address, on_task_end)
        else:
            with ThreadPoolExecutor(max_workers=sweep.workers) as pool:
                futures = [pool.submit(_attempt_local, sweep, t, view) for t in pending]
                try:
                    for future in as_completed(futures):
                        future.result()
                        on_task_end()
                except BaseException:
                    # the caller's hook failed (or a kill): start no further cell, rather than train them all
                    # before anyone hears of it; the cells running finish in their own processes
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        view.close()
    result = aggregate(sweep)
    for warning in result["warnings"]:  # what `train` warns of, which a worker's output never shows
        log_line(f"supermask: warning: {warning}")
    failed = [c for c in sweep.cells if c.status == "failed"]
    if failed:
        raise SupermaskError(f"{len(failed)} of {len(sweep.cells)} cells failed, first {failed[0].name}: "
                             f"{failed[0].error or 'see its run directory'}; run the sweep again to retry them")
    return result


def aggregate(sweep: Sweep) -> dict[str, Any]:
    """results.csv (a row per finished cell, a column per grid key, the steps its schedules fired), results.md (per
    cell of the grid, mean ± 95% interval over its seeds, and each method's paired difference from its base) and
    results.png; `warnings` holds a line per cell whose IWR or IteRand schedule fired no step."""
    extra = [k for k in sweep.axes() if k not in ROW_KEYS]
    rows, warnings = [], []
    for cell in sweep.cells:
        if cell.finished:
            s = json.loads((cell.out_dir / SUMMARY).read_text())
            row = {"cell": cell.name, **{k: s[k] for k in ROW_KEYS}, **{k: s.get(k) for k in STEP_KEYS}}
            row.update({k: _column(cell.overrides.get(k)) for k in extra})
            idle = idle_schedules(cell_config(sweep, cell), s)
            row["no_step_fired"] = ", ".join(name for name, _ in idle)
            warnings += [f"{cell.name}: {what} fired no step in {s['epochs']} epochs ({name}_steps 0): results.md "
                         f"marks it '{NO_STEP}' and gives its comparison no verdict" for name, what in idle]
            rows.append(row)
    axes = [k for k in sweep.axes() if k != "method"]
    cells, differences = seed_estimates(rows, axes), paired_differences(rows, axes)
    if rows:
        write_csv(sweep.out_dir / "results.csv", rows, ["cell", *ROW_KEYS[:5], *extra, *ROW_KEYS[5:], *STEP_KEYS])
        atomic_write_text(sweep.out_dir / "results.md", results_table(cells, differences, axes, sweep.run_once))
        try:
            from supermask.analysis.plots import seed_plot

            seed_plot(cells, differences, axes, sweep.out_dir / "results.png")
        except ConfigError:  # no matplotlib: the table and CSV still hold everything
            pass
    return {"cells": len(sweep.cells), "finished": len(rows), "rows": rows, "estimates": cells,
            "differences": differences, "warnings": warnings}


def idle_schedules(cfg: Config, summary: dict) -> list[tuple[str, str]]:
    """(name, setting) of each IWR or IteRand schedule `cfg` sets that the run's summary says fired no step: such
    a run is its base method under another name. A summary without step counts (an older run) is not judged."""
    every = cfg.iterand_every_steps or cfg.iterand_every_epochs
    unit = "steps" if cfg.iterand_every_steps is not None else "epochs"
    scheduled = {"iwr": f"iwr_every={cfg.iwr_every} (warm-up {cfg.iwr_warmup})" if cfg.iwr_every is not None else None,
                 "iterand": f"iterand_every_{unit}={every}" if every is not None else None}
    return [(name, what) for name, what in scheduled.items() if what and summary.get(f"{name}_steps") == 0]


def _column(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _order(key: tuple) -> tuple:
    """Sort numbers as numbers and everything else as text."""
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)) for v in key)


def _seeds(row: dict) -> tuple:
    return tuple(row.get(k) for k in SEED_COLUMNS)


def seed_estimates(rows: list[dict], axes: list[str]) -> list[dict]:
    """One entry per (axes..., method): the cells that differ only in seeds, as n, mean, std and 95% interval of
    the test accuracy in %."""
    groups: dict[tuple, list[float]] = {}
    idle: dict[tuple, set[str]] = {}
    for r in rows:
        key = (*(r[k] for k in axes), r["method"])
        groups.setdefault(key, []).append(100 * r["test_acc"])
        idle.setdefault(key, set()).update(filter(None, (r.get("no_step_fired") or "").split(", ")))
    return [{**dict(zip([*axes, "method"], key)), **estimate(groups[key]).to_dict(),
             "no_step_fired": ", ".join(sorted(idle[key]))} for key in sorted(groups, key=_order)]


def paired_differences(rows: list[dict], axes: list[str], bases: dict[str, str] | None = None) -> list[dict]:
    """Per value of the axes, each method minus its base (`bases`, by default PAIRED_BASES) on the seeds both ran, in
    points of accuracy, with its 95% interval and verdict."""
    bases = PAIRED_BASES if bases is None else bases
    acc: dict[tuple, dict[tuple, float]] = {}
    idle: set[tuple] = set()  # (axes..., method) with a cell whose schedule fired no step
    for r in rows:
        key = (*(r[k] for k in axes), r["method"])
        acc.setdefault(key, {})[_seeds(r)] = 100 * r["test_acc"]
        if r.get("no_step_fired"):
            idle.add(key)
    out = []
    for key in sorted(acc, key=_order):
        *at, method = key
        base = acc.get((*at, bases.get(method)))
        diff = paired_difference(acc[key], base) if base else None
        if diff:
            # A schedule that never fired compares the base with itself: there is nothing to judge.
            judged = NO_STEP if key in idle else verdict(diff)
            out.append({**dict(zip(axes, at)), "method": method, "base": bases[method], **diff.to_dict(),
                        "verdict": judged})
    return out


def estimate_text(entry: dict, sign: bool = False) -> str:
    text = Estimate(entry["n"], entry["mean"], entry["std"], entry["ci_half_width"]).text(sign=sign)
    return f"{text}, {NO_STEP}" if entry.get("no_step_fired") else text


STATS_NOTE = ("mean ± half-width of the 95% confidence interval (Student t) over the seeds of each cell, n seeds; "
              "a cell of one seed has no interval.")
PAIRED_NOTE = ("Paired differences (points of test accuracy, over the seeds both methods ran): ahead or behind when "
               "the 95% interval excludes 0, within noise when it holds 0.")
NO_STEP_NOTE = (f"A cell marked \"{NO_STEP}\": its IWR or IteRand schedule fired no step (iwr_steps or iterand_steps 0 "
                "in results.csv; the period is longer than the run), so it trained as its base method, and its paired "
                "difference gets no verdict.")


def run_once_note(run_once: dict[str, list[str]]) -> str:
    """What results.md says of methods whose cells ran once because the grid varied seeds they do not use."""
    return " ".join(f"{method} does not use {' or '.join(keys)}: it ran once for the grid's values of "
                    f"{'them' if len(keys) > 1 else 'it'}, so its n counts only the seeds it uses."
                    for method, keys in sorted(run_once.items()))


def results_table(cells: list[dict], differences: list[dict], axes: list[str],
                  run_once: dict[str, list[str]] | None = None) -> str:
    """Markdown: a row per value of the axes, a column per method; then the paired differences."""
    methods = sorted({c["method"] for c in cells})
    by_row: dict[tuple, dict[str, dict]] = {}
    for c in cells:
        by_row.setdefault(tuple(c[k] for k in axes), {})[c["method"]] = c
    head = axes or ["runs"]
    lines = ["| " + " | ".join(head + methods) + " |", "|---" * (len(head) + len(methods)) + "|"]
    for key, by in by_row.items():
        labels = [_format(v) for v in key] or ["all"]
        lines.append("| " + " | ".join(labels + [estimate_text(by[m]) if m in by else "-" for m in methods]) + " |")
    notes = [f"Test accuracy (%): {STATS_NOTE}"]
    if run_once:
        notes.append(run_once_note(run_once))
    if any(c.get("no_step_fired") for c in cells):
        notes.append(NO_STEP_NOTE)
    text = "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
    if differences:
        lines = ["| " + " | ".join(head + ["method - base", "difference", "verdict"]) + " |", "|---" * (len(head) + 3) + "|"]
        for d in differences:
            labels = [_format(d[k]) for k in axes] or ["all"]
            lines.append("| " + " | ".join(labels + [f"{d['method']} - {d['base']}", estimate_text(d, sign=True),
                                                     d["verdict"]]) + " |")
        text += "\n" + "\n".join(lines) + f"\n\n{PAIRED_NOTE}\n"
    return text
