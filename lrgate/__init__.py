"""lrgate: read fastai's LR range test into a learning rate or a slice, and keep the plot for review.

The names below load lazily, so ``lrgate suggest`` and the pure core never import fastai or Prefect.
The analysis function itself is ``lrgate.core.suggest.suggest`` (``lrgate.core.suggest`` is its module).
"""

import sys
from importlib import import_module
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec

__version__ = "0.14.0"

_EXPORTS = {
    "read_curve": "lrgate.core.suggest",
    "format_choices": "lrgate.core.suggest",
    "Suggestion": "lrgate.core.suggest",
    "review_figure": "lrgate.core.plot",
    "save_review": "lrgate.core.plot",
    "read_curve_csv": "lrgate.core.curve_file",
    "write_curve_csv": "lrgate.core.curve_file",
    "detect_state": "lrgate.training.learner_state",
    "find_optimal_lr": "lrgate.notebook",
    "suggest_for_learner": "lrgate.notebook",
    "GateRecord": "lrgate.core.gate_records",
    "Decision": "lrgate.core.gate_records",
    "CurveError": "lrgate.core.errors",
    "LrgateError": "lrgate.core.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lrgate' has no attribute {name!r}")


# Where 0.4.0's modules live now. A model.pkl that 0.4.0 exported names some of them (its data pipeline's labels,
# the Lite0 body and splitter): this keeps such a file loading with fastai's load_learner.
MOVED_IN_0_5 = {
    **{f"lrgate.{m}": f"lrgate.core.{m}" for m in ("suggest", "peers", "curve_file", "plot", "race_plan", "outputs")},
    **{f"lrgate.{m}": f"lrgate.core.{m}" for m in ("errors", "config", "fleet_config", "run_dir", "parent_death")},
    **{f"lrgate.{m}": f"lrgate.training.{m}" for m in ("range_test", "learner_state", "race", "models", "data")},
    **{f"lrgate.{m}": f"lrgate.training.{m}" for m in ("efficientnet_lite0", "distributed", "distributed_train")},
    **{f"lrgate.{m}": f"lrgate.operations.{m}" for m in ("report", "guard", "promotion", "review", "fleet_report")},
    "lrgate.work_pools": "lrgate.operations.work_pools",
    "lrgate.stages": "lrgate.training.stage_functions",
}


class _MovedModule(MetaPathFinder, Loader):
    """Imports a 0.4.0 module path as the module that now holds its code (the same module object)."""

    def find_spec(self, name, path=None, target=None):
        return ModuleSpec(name, self) if name in MOVED_IN_0_5 else None

    def create_module(self, spec):
        module = import_module(MOVED_IN_0_5[spec.name])
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's: put it back after
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # already executed, under its own name


if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
    sys.meta_path.append(_MovedModule())
