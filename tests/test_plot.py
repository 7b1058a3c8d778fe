from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from lrgate.core.curve_file import read_curve_csv
from lrgate.core.plot import race_panel, review_figure, save_review, save_unread_curve, unread_curve_figure
from lrgate.core.race_plan import Race, Trial
from lrgate.core.suggest import FRAME_COLUMNS, suggest
from tests.conftest import EXAMPLE_CURVES, bowl

X = np.linspace(-7, 1, 120)


def test_review_plot_is_a_readable_png_with_its_data_beside_it(tmp_path):
    s = suggest(*read_curve_csv(EXAMPLE_CURVES / "digits_adam_bs64_unfrozen.csv"), "unfrozen")
    png, csv = save_review(s, tmp_path / "gate2.png", show_maxima=True)
    assert csv == tmp_path / "gate2.csv"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    frame = pd.read_csv(csv, index_col="iteration")
    assert tuple(frame.columns) == FRAME_COLUMNS
    assert np.allclose(frame["lrs"], s.frame["lrs"])


def test_title_states_the_state_and_the_choice():
    s = suggest(10**X, bowl(X, (-5, 0.5), (-3, 0.5)), "unfrozen")
    title = review_figure(s).axes[0].get_title(loc="left")
    assert title.startswith("unfrozen: slice(")
    assert f"{s.slice[1]:.1e}" in title


def test_curves_are_blue_and_orange_and_minima_red():
    s = suggest(10**X, bowl(X, (-3, 1.0)), "frozen")
    fig = review_figure(s, show_maxima=True)
    loss_ax, grad_ax = fig.axes
    assert loss_ax.lines[0].get_color() == "tab:blue"
    assert grad_ax.lines[0].get_color() == "tab:orange"
    colors = {
        tuple(c.get_facecolor()[0][:3]) for c in loss_ax.collections + grad_ax.collections if len(c.get_offsets())
    }
    assert (1.0, 0.0, 0.0) in colors  # red minima
    assert (0.0, 128 / 255, 0.0) in colors  # green maxima, when asked
    assert loss_ax.get_xscale() == "log"


def test_y_limits_show_the_bowl_not_the_divergence():
    s = suggest(10**X, bowl(X, (-3, 1.0)), "frozen")
    low, high = review_figure(s).axes[0].get_ylim()
    assert high < s.frame["loss"].max() / 2  # the exponential tail reaches far higher
    assert low <= s.frame["loss"].min()


def test_a_curve_that_cannot_be_read_still_gets_its_graph(tmp_path):
    lrs = np.geomspace(1e-7, 1, 12)
    losses = np.r_[np.linspace(2, 1, 9), np.nan, np.inf, 5.0]  # a divergence: the last finite point is drawn too
    fig = unread_curve_figure(lrs, losses, "frozen: the range test cannot be read: why")
    (line,) = fig.axes[0].get_lines()
    assert len(line.get_xdata()) == 10 and fig.axes[0].get_xscale() == "log"
    assert "cannot be read: why" in fig.axes[0].get_title(loc="left")
    # nothing finite at all: the graph says so instead of failing
    empty = unread_curve_figure(lrs, np.full(12, np.nan), "t")
    assert not empty.axes[0].get_lines() and "no finite loss" in empty.axes[0].texts[0].get_text()
    png = save_unread_curve(lrs, losses, tmp_path / "review.png", "t")
    with Image.open(png) as im:
        assert im.format == "PNG"


def test_the_race_panel_crosses_out_a_compressed_trial_whose_loss_ran_away():
    trials = (
        Trial(0, 1e-3, 16, 1.1, 0.56, 0.1),
        Trial(0, 0.32, 16, 16.6, 0.57, 0.1),
        Trial(1, 1e-3, 48, 0.9, 0.60, 0.1),
        Trial(1, 1e-2, 48, 9.0, 0.55, 0.1),  # the last rung is the whole stage: no guard there
    )
    race = Race((1e-3, 1e-2, 0.32), trials, 1e-3, None, "accuracy", {}, 48, 96, 0.4)
    fig = Figure()
    ax = fig.subplots()
    race_panel(ax, race)
    # before unfreeze the short rung ranks by loss: it is drawn by loss on a second axis at the right
    (loss_ax,) = [a for a in fig.axes if a is not ax]
    assert loss_ax.get_ylabel().startswith("valid_loss") and ax.get_ylabel().startswith("accuracy")
    (crosses,) = [line for line in loss_ax.get_lines() if line.get_label().startswith("loss ran away")]
    assert list(crosses.get_xdata()) == [0.32] and list(crosses.get_ydata()) == [16.6]
    (whole,) = [line for line in ax.get_lines() if line.get_label().startswith("rung 1")]
    assert list(whole.get_ydata()) == [0.60, 0.55]  # the whole-length rung by its accuracy, on the left
    (winner,) = [line for line in ax.get_lines() if line.get_label().startswith("winner")]
    assert list(winner.get_ydata()) == [0.60]
    assert loss_ax.get_yscale() == "log" and ax.get_yscale() == "linear"
    sliced = Figure()
    race_panel(sliced.subplots(), dataclasses.replace(race, ratio=10.0))  # after unfreeze: one axis, the score
    assert len(sliced.axes) == 1 and sliced.axes[0].get_ylabel().startswith("accuracy")
    short = Figure()  # every rung shorter than the stage, before unfreeze: one axis, the loss
    race_panel(short.subplots(), dataclasses.replace(race, stage_iterations=200))
    assert len(short.axes) == 1 and short.axes[0].get_ylabel().startswith("valid_loss")


def test_the_lr_axis_reaches_a_race_candidate_past_the_tests_end():
    # before unfreeze the race's candidates reach half a decade past the range test's last lr (REACH_DECADES)
    s = suggest(10**X, bowl(X, (-3, 1.0)), "frozen")
    top = s.tested_range[1] * 10**0.5
    trials = (Trial(0, 1e-3, 16, 1.0, 0.5, 0.1), Trial(0, top, 16, 0.9, 0.6, 0.1))
    race = Race((1e-3, top), trials, top, None, "accuracy", {}, 16, 32, 0.2)
    curve, panel = review_figure(dataclasses.replace(s, race=race, lr=top)).axes[:2]
    assert curve.get_xlim()[1] > top and panel.get_xlim() == curve.get_xlim()  # the winner, ringed, in sight
    assert review_figure(s).axes[0].get_xlim()[1] == s.tested_range[1]  # no race: the curve's own span
