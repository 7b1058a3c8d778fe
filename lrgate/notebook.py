"""The notebook's API, at the import path the README shows: ``from lrgate.notebook import find_optimal_lr``.

The functions live on the fastai side, in :mod:`lrgate.training.learner_suggestion`.
"""

from lrgate.training.learner_suggestion import find_optimal_lr, suggest_for_learner

__all__ = ["find_optimal_lr", "suggest_for_learner"]
