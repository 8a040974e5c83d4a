"""The package's layers: no module imports from a layer above its own, and `import supermask` gives the core API
without the training loop, the data sources, sweeps or trackers."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import supermask

ROOT = Path(supermask.__file__).parent
# Lowest first: a module may import from its own layer and those before it (supermask/__init__.py says why).
LAYERS = ["errors", "compat", "core", "models", "data", "run", "export", "analysis", "multi", "cli"]
OUTSIDE = {"__init__", "__main__", "_moved"}  # the package's entry points, above every layer


def layer_of(module: str) -> str:
    """'supermask.run.train' -> 'run'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """The supermask modules a file imports, at any depth (imports inside functions count too)."""
    module = ".".join(("supermask", *path.relative_to(ROOT).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from supermask import data` imports a subpackage; `from supermask.run.train import run` the module
            names = [f"{base}.{a.name}" for a in node.names] if base == "supermask" or not node.module else [base]
            found.update(n for n in names if n.startswith("supermask"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("supermask"))
    return found


def test_no_module_imports_from_a_higher_layer():
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 40
    wrong = []
    for path in modules:
        own = layer_of(".".join(("supermask", *path.relative_to(ROOT).with_suffix("").parts)))
        if own in OUTSIDE:
            continue
        assert own in LAYERS, f"{path} is in no layer"
        for imported in imports_of(path):
            theirs = layer_of(imported)  # a name of the package itself (__version__) is above every layer
            if theirs in LAYERS and LAYERS.index(theirs) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)} ({own}) imports {imported} ({theirs})")
    assert wrong == []


def test_the_layer_check_sees_a_violation(tmp_path):
    bad = ROOT / "core" / "_layer_probe.py"
    assert not bad.exists()
    text = "def f():\n    from supermask.run.train import run\n"
    assert imports_of_text(text, "core/_layer_probe.py") == {"supermask.run.train"}


def imports_of_text(text: str, relative: str) -> set[str]:
    path = ROOT / relative
    original = Path.read_text
    try:
        Path.read_text = lambda self, *a, **k: text if self == path else original(self, *a, **k)
        return imports_of(path)
    finally:
        Path.read_text = original


def test_import_supermask_gives_the_core_api_only():
    code = ("import sys, json, supermask\n"
            "heavy = [m for m in sys.modules if m.startswith(('supermask.run.train', 'supermask.data', "
            "'supermask.multi', 'supermask.run.trackers', 'supermask.export.smask', 'supermask.cli'))]\n"
            "print(json.dumps(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
    assert callable(supermask.load) and supermask.Together.__name__ == "Together"  # imported when first used


def test_old_module_paths_still_import():
    code = ("from supermask.run.train import run\nfrom supermask.run.config import make_config\n"
            "from supermask.multi.stats import estimate\nimport supermask.run.schedule, supermask.core.labels\n"
            "from supermask.export.smask import HEADER, load\nimport supermask.run.train as new\n"
            "import supermask.run.train as old\nassert old is new\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_command_lines_help_imports_no_torch():
    code = ("import sys\nfrom supermask.cli import main\nsys.argv = ['supermask', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr
    assert "usage: supermask" in out.stdout
