"""The module paths of reprlearn 0.2 that 0.3 moved into packages, kept importable.

`from reprlearn.distances import pairwise_distance` (0.2) and `from reprlearn.ops.distances import
pairwise_distance` (0.3) give the same function: each old path is the new module itself, entered
under its old name in `sys.modules`. Modules that carry a heavy import (TensorBoard, matplotlib,
keras-tuner) are aliased on first use, not at `import reprlearn`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# 0.2 path → 0.3 path.
MOVED = {
    "reprlearn.distances": "reprlearn.ops.distances",
    "reprlearn.labels": "reprlearn.ops.labels",
    "reprlearn.replicas": "reprlearn.ops.replicas",
    "reprlearn.miners": "reprlearn.losses.miners",
    "reprlearn.registry": "reprlearn.losses.registry",
    "reprlearn.optimizers": "reprlearn.models.optimizers",
    "reprlearn.strategies": "reprlearn.training.strategies",
    "reprlearn.launch": "reprlearn.training.launch",
    "reprlearn.objectives": "reprlearn.training.objectives",
    "reprlearn.tuning": "reprlearn.training.tuning",
    "reprlearn.scoring": "reprlearn.evaluation.scoring",
    "reprlearn.report": "reprlearn.evaluation.report",
    "reprlearn.projector": "reprlearn.evaluation.projector",
    "reprlearn.transfer": "reprlearn.evaluation.transfer",
    "reprlearn.plots": "reprlearn.evaluation.figures",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        """Nothing to run: the new module ran when `create_module` imported it; importlib files it under the
        old name."""


def alias_moved_modules() -> None:
    """Lets every 0.2 module path import as its 0.3 module."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
