"""Peers' suggestion rules, rebuilt in numpy so they run on saved curves without torch: fastai's ``valley``,
``slide``, ``minimum`` and ``steep`` (fastai 2.8 ``callback/schedule.py``) and Lightning's steepest-gradient rule.

Each takes the raw curve (finite, lrs increasing) and returns one lr, exactly as its origin would, for the
efficacy benchmark and for ``--method``. fastai reads only ``[num_it // 10 : -5]`` of a record; the record's
own length stands in for ``num_it`` here (the same when the test ran all its iterations).
"""

from __future__ import annotations

import numpy as np


def fastai_window(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of a record that fastai's suggestion functions see: ``[n // 10 : -5]``."""
    n = len(lrs)
    return lrs[n // 10 : -5], losses[n // 10 : -5]


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's default: the longest run of decreasing loss (any subsequence), a point 1/3 + 1/6 along it."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005, adjust: float = 1.0) -> float:
    """fastai's interval slide rule on ``np.gradient(losses)`` (against the index), from the right.

    Raises ValueError on fewer than ``lr_diff + 2`` points (fastai's own would index out of range).
    """
    if len(losses) < lr_diff + 2:
        raise ValueError(f"slide needs at least {lr_diff + 2} points in fastai's window, got {len(losses)}")
    grad = np.gradient(losses)
    r, l_ = -1, -1 - lr_diff
    local_min_lr = lrs[l_]
    while l_ >= -len(losses) and abs(grad[r] - grad[l_]) > thresh:
        local_min_lr = lrs[l_]
        r -= 1
        l_ -= 1
    return float(local_min_lr) * adjust


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's ``minimum``: a tenth of the lr at the lowest loss."""
    return float(lrs[int(np.argmin(losses))]) / 10


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's ``steep``: where the loss falls fastest per unit of log(lr) (forward differences)."""
    grads = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(grads))])


def lightning(lrs: np.ndarray, losses: np.ndarray, skip_begin: int = 10, skip_end: int = 1) -> float:
    """Lightning's ``suggestion()`` (2.5.3 on): skip the ends, drop non-finite losses, argmin of the gradient
    taken against the linear lr."""
    lrs, losses = lrs[skip_begin:-skip_end], losses[skip_begin:-skip_end]
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    return float(lrs[int(np.argmin(np.gradient(losses, lrs)))])


FASTAI = {"valley": valley, "slide": slide, "minimum": minimum, "steep": steep}
