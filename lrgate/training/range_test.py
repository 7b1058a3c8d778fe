"""Run fastai's LR range test (``Learner.lr_find``) and know whether the Recorder holds one.

After ``fit_one_cycle`` the Recorder holds a training schedule, which looks like a curve but must never
be read as a range test. :class:`RangeTestMarker` records, at the end of every fit, whether that fit was
a range test, so a fresh ``lr_find`` can be reused and anything else cannot.
"""

from __future__ import annotations

import numpy as np
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder
from fastai.learner import Learner


class RangeTestMarker(Callback):
    """Remembers whether the Learner's last fit was a range test (an ``LRFinder`` was in it)."""

    def __init__(self) -> None:
        self.last_fit_was_range_test = False

    def before_fit(self) -> None:
        # Until this fit ends cleanly, the Recorder holds a partial record of it: nothing to reuse.
        self.last_fit_was_range_test = False

    def after_fit(self) -> None:
        self.last_fit_was_range_test = any(isinstance(cb, LRFinder) for cb in self.learn.cbs)


def marker(learn: Learner) -> RangeTestMarker:
    """The Learner's :class:`RangeTestMarker`, added on first use."""
    found = [cb for cb in learn.cbs if isinstance(cb, RangeTestMarker)]
    if found:
        return found[0]
    cb = RangeTestMarker()
    learn.add_cb(cb)
    return cb


def recorded_curve(learn: Learner) -> tuple[np.ndarray, np.ndarray]:
    """The Recorder's ``(lrs, losses)`` as float arrays (losses are the smoothed ones)."""
    rec = learn.recorder
    return np.array([float(lr) for lr in rec.lrs]), np.array([float(loss) for loss in rec.losses])


def last_range_test(learn: Learner) -> tuple[np.ndarray, np.ndarray] | None:
    """The curve of the Learner's last fit if that fit was a range test seen by the marker, else None."""
    cb = marker(learn)
    if not cb.last_fit_was_range_test or not learn.recorder.lrs:
        return None
    return recorded_curve(learn)


def run_range_test(
    learn: Learner, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``learn.lr_find`` (weights and optimizer are restored after it) and return ``(lrs, losses)``."""
    marker(learn)
    learn.lr_find(
        start_lr=start_lr,
        end_lr=end_lr,
        num_it=num_it,
        stop_div=stop_div,
        show_plot=False,
        suggest_funcs=None,
    )
    return recorded_curve(learn)
