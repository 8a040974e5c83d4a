"""Module paths from before the package had subpackages (`supermask.train`, `supermask.config`, ...): importing
one gives the module at its new place, so code written against them keeps working. New code uses the new paths."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "mask": "core.mask", "init": "core.init", "methods": "core.methods", "recycle": "core.recycle",
    "iterand": "core.iterand", "labels": "core.labels",
    "config": "run.config", "train": "run.train", "checkpoint": "run.checkpoint", "distributed": "run.distributed",
    "trackers": "run.trackers", "lock": "run.lock", "rundir": "run.rundir", "schedule": "run.schedule",
    "progress": "run.progress", "allocator": "compat", "configs": "run.configs",
    "codec": "export.codec", "landscape": "analysis.landscape", "plots": "analysis.plots",
    "together": "multi.together", "study": "multi.study", "sweep": "multi.sweep", "stats": "multi.stats",
    "reuse": "multi.reuse",
}
# supermask.convert is the function now (the module is supermask.core.convert); supermask.export and
# supermask.analysis are packages whose __init__ keeps the old module's public names.


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        # The import system takes whatever sys.modules holds under the name after this: the real module.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.partition(".")
        if package == "supermask" and name in MOVED:
            return importlib.util.spec_from_loader(fullname, _Alias(f"supermask.{MOVED[name]}"))
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
