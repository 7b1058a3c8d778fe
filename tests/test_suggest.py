"""The curve analysis on synthetic curves whose answer is known by construction, and on bad input.

Most tests pin the forum post's method (``inflection``); the default, ``bowl``, has its own section at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lrgate.core import suggest as core
from lrgate.core.errors import CurveError
from lrgate.core.suggest import BOWL, BOWL_DIVISOR, FRAME_COLUMNS, INFLECTION, curve_frame, find_upturn
from tests.conftest import bowl


def suggest(*args, **kwargs) -> core.Suggestion:
    """The post's method unless a test names another."""
    return core.suggest(*args, **{"method": INFLECTION, **kwargs})


EFFICACY_CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "efficacy" / "curves"
X = np.linspace(-7, 1, 160)
LRS = 10**X


def decades_apart(a: float, b: float) -> float:
    return abs(np.log10(a) - np.log10(b))


def test_frame_has_the_posts_columns_with_nan_where_no_extremum():
    frame = curve_frame(LRS, bowl(X, (-3, 1.0)), noise=3)
    assert tuple(frame.columns) == FRAME_COLUMNS
    assert frame["min_loss"].notna().sum() >= 1
    # NaN exactly where the curve has no minimum: the column equals the loss at its minima only.
    at_min = frame["min_loss"].notna()
    assert np.allclose(frame.loc[at_min, "min_loss"], frame.loc[at_min, "loss"])
    assert at_min.sum() < len(frame) / 4


def test_gradient_is_taken_against_log10_lr_even_when_records_are_uneven():
    t = np.linspace(0, 1, 160)
    x = -7 + 8 * t**1.6  # records crowd at low lr, thin out at high lr
    frame = curve_frame(10**x, bowl(x, (-3, 1.0)), noise=3)
    h = 1e-6
    analytic = (bowl(x + h, (-3, 1.0)) - bowl(x - h, (-3, 1.0))) / (2 * h)
    bowl_part = (x > x[0]) & (x < -1)  # interior points before the upturn's exponential
    assert np.allclose(frame["loss_grad"].to_numpy()[bowl_part], analytic[bowl_part], atol=0.02)


def test_uneven_records_give_the_same_lr():
    even = suggest(LRS, bowl(X, (-3, 1.0)), "frozen")
    t = np.linspace(0, 1, 160)
    x = -7 + 8 * t**1.6
    uneven = suggest(10**x, bowl(x, (-3, 1.0)), "frozen")
    assert decades_apart(even.lr, uneven.lr) < 0.1


def test_frozen_lr_is_the_steepest_descent_of_a_clean_bowl():
    s = suggest(LRS, bowl(X, (-3, 1.0)), "frozen", method=INFLECTION)
    assert s.slice is None
    assert decades_apart(s.lr, 1e-3) < 0.1
    assert s.gradient_choices[0] == s.lr
    assert s.warnings == ()


def test_unfrozen_slice_spans_the_two_rightmost_gradient_minima():
    s = suggest(LRS, bowl(X, (-5, 0.5), (-3, 0.5)), "unfrozen", method=INFLECTION)
    lo, hi = s.slice
    assert decades_apart(lo, 1e-5) < 0.1 and decades_apart(hi, 1e-3) < 0.1
    assert s.lr == hi
    assert s.value == slice(lo, hi)


def test_freeze_to_gives_a_slice_too():
    s = suggest(LRS, bowl(X, (-5, 0.5), (-3, 0.5)), "freeze_to", method=INFLECTION)
    assert s.slice is not None and s.state == "freeze_to"


def test_candidates_are_read_right_to_left():
    s = suggest(LRS, bowl(X, (-6, 0.3), (-5, 0.3), (-3, 0.3)), "frozen", method=INFLECTION)
    assert list(s.gradient_choices) == sorted(s.gradient_choices, reverse=True)
    assert [round(np.log10(v)) for v in s.gradient_choices] == [-3, -5, -6]


def test_a_minimum_within_margin_of_the_upturn_is_ignored():
    # The second descent sits half a decade below the upturn: too close with margin 1, fine with 0.25.
    loss = bowl(X, (-4, 0.5), (-1.2, 0.5), up=-0.6)
    upturn = find_upturn(loss)[1]
    assert X[upturn] - (-1.2) < 1
    assert decades_apart(suggest(LRS, loss, "frozen", margin=1).lr, 1e-4) < 0.1
    assert decades_apart(suggest(LRS, loss, "frozen", margin=0.25).lr, 10**-1.2) < 0.15


def test_every_choice_lies_below_the_cutoff():
    s = suggest(LRS, bowl(X, (-4, 0.5), (-1.2, 0.5), up=-0.6), "unfrozen")
    assert all(v <= s.cutoff_lr for v in s.gradient_choices + s.loss_choices)


def test_frozen_ignores_the_global_loss_minimum_at_the_bottom_of_the_bowl():
    loss = bowl(X, (-3, 1.0))
    bottom_lr = LRS[np.argmin(loss)]
    frozen = suggest(LRS, loss, "frozen", margin=0)
    unfrozen = suggest(LRS, loss, "unfrozen", margin=0)
    assert bottom_lr not in frozen.loss_choices
    assert bottom_lr in unfrozen.loss_choices


def test_min_loss_div10_uses_the_rightmost_local_loss_minimum():
    s = suggest(LRS, bowl(X, (-3, 1.0)), "frozen")
    assert s.min_loss_lr_div10 == pytest.approx(LRS[np.argmin(bowl(X, (-3, 1.0)))] / 10)


def test_one_gradient_minimum_unfrozen_falls_back_to_a_tenth_below_it():
    s = suggest(LRS, bowl(X, (-3, 1.0)), "unfrozen")
    lo, hi = s.slice
    assert lo == pytest.approx(hi / 10)
    assert any("only one valid gradient minimum" in w for w in s.warnings)


def test_single_group_model_gets_one_lr_even_unfrozen():
    s = suggest(LRS, bowl(X, (-5, 0.5), (-3, 0.5)), "unfrozen", n_groups=1)
    assert s.slice is None and decades_apart(s.lr, 1e-3) < 0.1


def test_no_gradient_minimum_below_the_cutoff_falls_back_with_a_warning():
    # A plain descent into a wall: the only inflection lies within the margin; no valid minimum remains.
    x = np.linspace(-3, 0, 60)
    loss = 2 - x * 0.0 - 0.2 * (x + 3) + np.exp(6 * (x + 0.2))
    s = suggest(10**x, loss, "frozen", margin=1)
    assert s.lr <= s.cutoff_lr and s.lr >= s.tested_range[0]
    assert any("no valid" in w for w in s.warnings)


def test_a_curve_that_never_turns_up_is_capped_a_margin_below_its_end():
    loss = 2 - (1 + np.tanh((X + 3) / 0.4)) / 2  # falls, then stays down: no upturn
    s = suggest(LRS, loss, "frozen")
    assert not s.turned_up
    assert s.lr <= LRS[-1] / 10
    assert any("never turns up" in w for w in s.warnings)


def test_a_dead_flat_curve_is_refused():
    with pytest.raises(CurveError, match="does not change"):
        suggest(LRS, np.full_like(X, 0.7), "unfrozen")


def test_a_nearly_flat_curve_before_the_upturn_is_flagged():
    rng = np.random.default_rng(0)
    loss = 0.3 + 0.001 * rng.standard_normal(len(X)) + np.exp(4 * (X + 0.5))
    s = suggest(LRS, loss, "unfrozen")
    assert any("nearly flat" in w for w in s.warnings)
    assert s.slice[0] <= s.slice[1] <= s.cutoff_lr


def test_non_finite_losses_cut_the_curve_there():
    loss = bowl(X, (-3, 1.0))
    cut = int(np.searchsorted(X, 0.5))
    broken = loss.copy()
    broken[cut] = np.nan
    broken[cut + 1 :] = np.inf
    s = suggest(LRS, broken, "frozen")
    clean = suggest(LRS[:cut], loss[:cut], "frozen")
    assert s.lr == clean.lr
    assert s.tested_range[1] == LRS[cut - 1]
    assert any("not finite" in w for w in s.warnings)


@pytest.mark.parametrize(
    ("lrs", "losses", "kwargs", "message"),
    [
        (LRS[::-1], bowl(X, (-3, 1)), {}, "increase strictly"),
        (np.r_[LRS[:5], LRS[4], LRS[6:]], bowl(X, (-3, 1)), {}, "increase strictly"),
        (np.r_[-1.0, LRS[1:]], bowl(X, (-3, 1)), {}, "finite and positive"),
        (np.r_[LRS[:-1], np.inf], bowl(X, (-3, 1)), {}, "finite and positive"),
        (LRS[:5], bowl(X, (-3, 1))[:5], {}, "at least 7 finite points"),
        (LRS, np.r_[np.nan, bowl(X, (-3, 1))[1:]], {}, "at least 7 finite points"),
        (LRS, bowl(X, (-3, 1))[:-1], {}, "one length"),
        ([], [], {}, "empty"),
        (LRS, bowl(X, (-3, 1)), {"noise": 0}, "positive integer"),
        (LRS, bowl(X, (-3, 1)), {"noise": -2}, "positive integer"),
        (LRS, bowl(X, (-3, 1)), {"noise": 2.5}, "positive integer"),
        (LRS, bowl(X, (-3, 1)), {"noise": True}, "positive integer"),
        (LRS, bowl(X, (-3, 1)), {"noise": 10**6}, "needs at least"),
        (LRS, bowl(X, (-3, 1)), {"margin": -1}, "margin"),
        (LRS, bowl(X, (-3, 1)), {"margin": float("nan")}, "margin"),
        (LRS, bowl(X, (-3, 1)), {"method": "magic"}, "unknown method"),
        (LRS, bowl(X, (-3, 1)), {"state": "half"}, "state must be"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(lrs, losses, kwargs, message):
    kwargs = {"state": "frozen", **kwargs}
    with pytest.raises(CurveError, match=message):
        suggest(lrs, losses, kwargs.pop("state"), **kwargs)


def test_an_upturn_at_the_start_of_the_test_is_refused():
    x = np.linspace(-3, 1, 80)
    loss = 1 + np.exp(3 * (x + 2.9))  # rises from the first point on
    with pytest.raises(CurveError, match="start the range test lower"):
        suggest(10**x, loss, "frozen")


def test_higher_noise_keeps_fewer_extrema():
    rng = np.random.default_rng(1)
    loss = bowl(X, (-3, 1.0)) + 0.01 * rng.standard_normal(len(X))
    few = curve_frame(LRS, loss, noise=10)["min_grad"].notna().sum()
    many = curve_frame(LRS, loss, noise=1)["min_grad"].notna().sum()
    assert few < many


def test_json_contract():
    d = suggest(LRS, bowl(X, (-5, 0.5), (-3, 0.5)), "unfrozen").to_dict()
    assert set(d) == {
        "state",
        "method",
        "params",
        "lr",
        "slice",
        "candidates",
        "min_loss_lr_div10",
        "tested_range",
        "warnings",
    }
    assert d["params"] == {"noise": 3, "margin": 1.0}
    assert d["lr"] == d["slice"][1]
    assert set(d["candidates"]) == {"gradient", "loss"}
    assert d["tested_range"] == [LRS[0], LRS[-1]]


def test_a_noise_sized_choice_far_left_of_the_real_descent_is_flagged():
    # The descent's steepest point falls inside the margin; the only valid gradient minimum is a wiggle.
    loss = bowl(X, (-0.9, 1.0), up=0.2) - 0.004 * np.exp(-(((X + 5) / 0.3) ** 2))
    s = suggest(LRS, loss, "frozen", method=INFLECTION)
    assert s.lr < 1e-3
    assert any("steepest valid descent" in w for w in s.warnings)


def test_a_clean_choice_raises_no_steepness_warning():
    s = suggest(LRS, bowl(X, (-3, 1.0)), "frozen", method=INFLECTION)
    assert not any("steepest" in w for w in s.warnings)


# ------------------------------------------------------------------ bowl, the default


def test_the_default_method_is_bowl():
    assert core.DEFAULT_METHOD == BOWL
    assert core.suggest(LRS, bowl(X, (-3, 1.0)), "frozen").method == BOWL


def test_bowl_frozen_is_the_bottom_of_the_bowl_over_its_divisor():
    loss = bowl(X, (-3, 1.0), up=-0.3)
    bottom = find_upturn(loss)[0]
    s = core.suggest(LRS, loss, "frozen")
    assert s.lr == pytest.approx(LRS[bottom] / BOWL_DIVISOR)
    assert s.slice is None and not s.warnings
    assert s.lr < s.upturn_lr  # never in the divergent region


def test_bowl_after_unfreeze_is_the_posts_slice():
    loss = bowl(X, (-5, 0.5), (-3, 0.5))
    for state in ("unfrozen", "freeze_to"):
        assert core.suggest(LRS, loss, state).slice == suggest(LRS, loss, state).slice


def test_bowl_reads_with_its_own_margin_unless_one_is_given():
    loss = bowl(X, (-3, 1.0), up=-0.3)
    assert core.suggest(LRS, loss, "frozen").margin == pytest.approx(np.log10(BOWL_DIVISOR))
    assert core.suggest(LRS, loss, "unfrozen").margin == core.DEFAULT_MARGIN
    capped = core.suggest(LRS, loss, "frozen", margin=2)
    assert capped.lr == pytest.approx(capped.cutoff_lr) and "capped" in capped.warnings[-1]


def test_bowl_warns_when_the_bottom_sits_at_the_start_of_the_test():
    # A lucky first batch: the smoothed loss is lowest right after the warm-up, then only rises.
    from lrgate.core.curve_file import read_curve_csv

    lrs, losses = read_curve_csv(EFFICACY_CURVES / "photos-lite0-sgd-bs8__s1__frozen.csv")
    s = core.suggest(lrs, losses, "frozen")
    assert s.lr < 1e-6
    assert any("no bowl to read" in w for w in s.warnings)
    assert not any("no bowl" in w for w in core.suggest(LRS, bowl(X, (-3, 1.0)), "frozen").warnings)


def test_bowl_after_unfreeze_goes_on_at_the_first_lr_when_the_loss_only_rises():
    loss = 1 + np.exp(2 * (X + 6.8))  # rises from the start: the upturn leaves no room below it
    with pytest.raises(CurveError, match="start the range test lower"):
        suggest(LRS, loss, "unfrozen")  # the post's rule
    s = core.suggest(LRS, loss, "unfrozen")
    assert s.slice == (LRS[0], LRS[0]) and "turns up" in s.warnings[-1]
