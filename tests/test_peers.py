"""The peers' rules, rebuilt in numpy, give exactly what fastai's own functions give on real curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback import schedule

from lrgate.core import peers
from lrgate.core.curve_file import read_curve_csv
from lrgate.core.suggest import suggest
from tests.conftest import EXAMPLE_CURVES

CURVES = sorted(EXAMPLE_CURVES.glob("*.csv"))


@pytest.mark.parametrize("name", ["valley", "slide", "minimum", "steep"])
@pytest.mark.parametrize("path", CURVES, ids=lambda p: p.stem)
def test_fastai_rules_match_fastai(path, name):
    lrs, losses = read_curve_csv(path)
    window = peers.fastai_window(lrs, losses)
    ours = peers.FASTAI[name](*window)
    theirs, _ = getattr(schedule, name)(torch.tensor(window[0]), torch.tensor(window[1]), len(lrs))
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_window_is_fastais():
    lrs = np.arange(1.0, 101.0)
    w, _ = peers.fastai_window(lrs, lrs)
    assert w[0] == 11.0 and w[-1] == 95.0  # [100 // 10 : -5]


def test_lightning_takes_the_gradient_against_linear_lr_and_skips_the_ends():
    lrs = np.logspace(-6, 0, 40)
    losses = np.ones(40)
    losses[25:] -= np.linspace(0, 1, 15)  # falls steeply at the high end in linear lr
    losses[5] = -10.0  # inside the skipped start: ignored
    assert peers.lightning(lrs, losses) >= lrs[25]


@pytest.mark.parametrize("name", ["valley", "slide", "minimum", "steep", "lightning"])
def test_peers_keep_lrgates_contract(name):
    lrs, losses = read_curve_csv(EXAMPLE_CURVES / "digits_adam_bs64_unfrozen.csv")
    s = suggest(lrs, losses, "unfrozen", method=name)
    lo, hi = s.slice
    assert lrs[0] <= lo <= hi == s.lr <= s.cutoff_lr
    assert lo == pytest.approx(max(hi / 10, lrs[0]))
