"""The package's import contract: modules import downward only, and the 0.2 import paths keep working.

Layers, lowest first. A module may import its own layer and any layer below it; a lower layer
importing a higher one fails `test_imports_run_one_way` with the offending line. Imports inside
functions count too (a lazy import is still a dependency).
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reprlearn"
LAYERS = [
    ["reprlearn.errors", "reprlearn._startup", "reprlearn._version"],
    ["reprlearn.ops", "reprlearn.data"],
    ["reprlearn.config"],
    ["reprlearn.layers", "reprlearn.losses", "reprlearn.metrics", "reprlearn.index", "reprlearn.models"],
    ["reprlearn.runs"],
    ["reprlearn.evaluation"],
    ["reprlearn.training"],
    ["reprlearn.cluster"],
    ["reprlearn.export"],
    ["reprlearn.cli", "reprlearn._moved", "reprlearn"],
]


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest listed prefix."""
    best = max((prefix for layer in LAYERS for prefix in layer
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def reprlearn_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reprlearn"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            # `from reprlearn.evaluation import figures` imports a module of that package
            found += [(node.lineno, name if (PACKAGE.parent / name.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / name.replace(".", "/")).is_dir() else node.module) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("reprlearn")]
    return found


def test_imports_run_one_way():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, imported in reprlearn_imports(path):
            if layer_of(imported) > layer_of(importer):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} {importer} (layer "
                                  f"{layer_of(importer)}) imports {imported} (layer {layer_of(imported)})")
    assert violations == []


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check above can fail: an upward import written into a copy of a low module is reported."""
    assert layer_of("reprlearn.config.schema") < layer_of("reprlearn.models.towers")
    assert layer_of("reprlearn.training.loop") > layer_of("reprlearn.evaluation.scoring")
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from reprlearn.models.towers import build_tower\n")
    assert reprlearn_imports(module) == [(2, "reprlearn.models.towers")]


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises ValueError (max of nothing) for an unlisted module


def test_config_imports_no_model_code():
    """Config validation runs without reprlearn's model code: importing it loads no tower, loss or layer module."""
    code = ("import sys, reprlearn.config\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('reprlearn.models', 'reprlearn.losses', "
            "'reprlearn.layers', 'reprlearn.training', 'reprlearn.runs')))\n"
            "print(bad)\n")
    # reprlearn/__init__ imports everything; load the subpackage without it, as its own top-level modules would.
    result = subprocess.run([sys.executable, "-c", "import importlib.util, sys, types\n"
                             "pkg = types.ModuleType('reprlearn'); pkg.__path__ = [" + repr(str(PACKAGE)) + "]\n"
                             "sys.modules['reprlearn'] = pkg\n" + code.replace("import sys, reprlearn.config\n",
                                                                               "import reprlearn.config\n")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# The 0.2 paths the README and docs showed, each the same object as at its 0.3 home.
MOVED_NAMES = [
    ("reprlearn.distances", "pairwise_distance", "reprlearn.ops.distances"),
    ("reprlearn.miners", "SemiHardMiner", "reprlearn.losses.miners"),
    ("reprlearn.miners", "BatchAllMiner", "reprlearn.losses.miners"),
    ("reprlearn.replicas", "global_batch", "reprlearn.ops.replicas"),
    ("reprlearn.registry", "make_loss", "reprlearn.losses.registry"),
    ("reprlearn.optimizers", "LayerRateAdam", "reprlearn.models.optimizers"),
    ("reprlearn.scoring", "evaluate_run", "reprlearn.evaluation.scoring"),
    ("reprlearn.plots", "plot_roc", "reprlearn.evaluation.figures"),
    ("reprlearn.runs", "load_run", "reprlearn.runs.api"),
    ("reprlearn.config", "load_config", "reprlearn.config.io"),
]


def test_old_import_paths_keep_working():
    """In one fresh process (importing is the point): each 0.2 path gives the very object of its 0.3 home."""
    lines = [f"from {old} import {name} as a\nfrom {new} import {name} as b\nassert a is b, {old!r}\n"
             f"import {old}, {new}\nassert {old}.{name} is {new}.{name}, {old!r}"
             for old, name, new in MOVED_NAMES]
    code = "\n".join(lines) + f"\nprint({len(MOVED_NAMES)})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == str(len(MOVED_NAMES)), result.stderr[-2000:]
