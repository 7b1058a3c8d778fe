"""Real curves, recorded from fastai lr_find runs of a tiny transfer Learner (tests/record_curves.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lrgate.core.curve_file import read_curve_csv
from lrgate.core.suggest import INFLECTION, suggest
from tests.conftest import EXAMPLE_CURVES

CURVES = sorted(EXAMPLE_CURVES.glob("*.csv"))


def state_of(path) -> str:
    return next(s for s in ("freeze_to", "unfrozen", "frozen") if s in path.stem)


def test_the_example_curves_are_there():
    assert {state_of(p) for p in CURVES} == {"frozen", "freeze_to", "unfrozen"}
    assert len(CURVES) >= 6


@pytest.mark.parametrize("path", CURVES, ids=lambda p: p.stem)
def test_real_curves_give_a_valid_suggestion(path):
    lrs, losses = read_curve_csv(path)
    assert len(lrs) >= 90 and np.all(np.diff(lrs) > 0)  # a real lr_find record
    s = suggest(lrs, losses, state_of(path), method=INFLECTION)
    assert lrs[0] <= s.lr <= s.cutoff_lr
    assert (s.slice is None) == (state_of(path) == "frozen")
    assert s.gradient_choices and s.gradient_choices[0] == s.lr


def test_adam_frozen_curve_reads_like_a_person_would():
    # Loss falls from ~1e-3 and bottoms out near 1: a person picks a few 1e-3; min-loss/10 is ~1e-1.
    s = suggest(*read_curve_csv(EXAMPLE_CURVES / "digits_adam_bs64_frozen.csv"), "frozen", method=INFLECTION)
    assert 1e-3 <= s.lr <= 3e-2
    assert s.turned_up and 0.5 < s.upturn_lr < 3
    assert 3e-2 < s.min_loss_lr_div10 < 0.3


def test_a_diverged_curve_is_read_below_the_divergence():
    # SGD with stop_div=False up to lr 1e4: the loss reaches 1e31.
    lrs, losses = read_curve_csv(EXAMPLE_CURVES / "digits_sgd_bs64_nostop_frozen.csv")
    assert losses.max() > 1e20
    s = suggest(lrs, losses, "frozen", method=INFLECTION)
    assert s.turned_up and s.upturn_lr < 100 and s.lr < 10
