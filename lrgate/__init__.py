"""lrgate: read fastai's LR range test into a learning rate or a slice, and keep the plot for review.

The names below load lazily, so ``lrgate suggest`` and the pure core never import fastai or Prefect.
The analysis function itself is ``lrgate.core.suggest.suggest`` (``lrgate.core.suggest`` is its module).
"""

from importlib import import_module

__version__ = "0.5.0"

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
