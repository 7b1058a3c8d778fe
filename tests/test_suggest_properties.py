"""Guarantees on random curves: a clear CurveError or an lr inside the tested range, below the upturn."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lrgate.core.errors import CurveError
from lrgate.core.suggest import METHODS, STATES, suggest

finite = st.floats(-1e3, 1e3, allow_nan=False)
loss_value = st.one_of(finite, finite, finite, st.sampled_from([np.nan, np.inf, -np.inf]))


@st.composite
def curves(draw):
    n = draw(st.integers(1, 140))
    start = draw(st.floats(-9, 0))
    steps = draw(st.lists(st.floats(1e-3, 0.5), min_size=n - 1, max_size=n - 1))
    lrs = 10 ** (start + np.concatenate([[0.0], np.cumsum(steps)]))
    kind = draw(st.sampled_from(["random", "walk", "bowl"]))
    if kind == "random":
        losses = np.array(draw(st.lists(loss_value, min_size=n, max_size=n)))
    else:
        noise = np.array(draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
        scale = draw(st.floats(0, 0.5))
        x = np.log10(lrs)
        centre = draw(st.floats(float(x[0]), float(x[-1])))
        shape = (
            np.cumsum(noise)
            if kind == "walk"
            else -np.tanh(x - centre) + np.exp(np.clip(3 * (x - centre - 1), -50, 50))
        )
        losses = 1 + shape + scale * noise
    return lrs, losses


@settings(max_examples=400, deadline=None)
@given(
    curves(),
    st.sampled_from(STATES),
    st.integers(1, 8),
    st.floats(0, 3),
    st.sampled_from([None, 1, 3]),
    st.sampled_from(sorted(METHODS)),
)
def test_any_curve_gives_a_clear_error_or_a_valid_suggestion(curve, state, noise, margin, n_groups, method):
    lrs, losses = curve
    try:
        s = suggest(lrs, losses, state, method=method, noise=noise, margin=margin, n_groups=n_groups)
    except CurveError as e:
        assert str(e)
        return
    lo_tested, hi_tested = s.tested_range
    assert np.isfinite(s.lr) and s.lr > 0
    assert lo_tested <= s.lr <= hi_tested
    if s.lr > s.upturn_lr / 10**margin * (1 + 1e-12):
        # bowl after unfreeze goes on at the first lr tested when the upturn leaves no room, and says so
        assert method == "bowl" and state != "frozen" and s.lr == lo_tested and "turns up" in s.warnings[-1]
    if s.slice is not None:
        assert lo_tested <= s.slice[0] <= s.slice[1] == s.lr
    assert s.slice is None or (state != "frozen" and n_groups != 1)
    assert len(s.gradient_choices) <= 3 and len(s.loss_choices) <= 3
