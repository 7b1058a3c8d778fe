"""lrgate: read fastai's LR range test into a learning rate or a slice, and keep the plot for review.

The names below load lazily, so ``lrgate suggest`` and the pure core never import fastai or Prefect.
The analysis function itself is ``lrgate.suggest.suggest`` (``lrgate.suggest`` is its module).
"""

from importlib import import_module

__version__ = "0.4.0"

_EXPORTS = {
    "read_curve": "lrgate.suggest",
    "format_choices": "lrgate.suggest",
    "Suggestion": "lrgate.suggest",
    "review_figure": "lrgate.plot",
    "save_review": "lrgate.plot",
    "read_curve_csv": "lrgate.curve_file",
    "write_curve_csv": "lrgate.curve_file",
    "detect_state": "lrgate.learner_state",
    "find_optimal_lr": "lrgate.notebook",
    "suggest_for_learner": "lrgate.notebook",
    "CurveError": "lrgate.errors",
    "LrgateError": "lrgate.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lrgate' has no attribute {name!r}")
