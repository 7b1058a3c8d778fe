"""The review plot of one range test: what a person looks at before trusting a suggestion.

Loss (blue) and loss gradient (orange) against lr on twin log axes; minima red, maxima green when asked;
the zone within ``margin`` decades of the upturn shaded; the chosen lr or slice marked and written in the
title with the state. Uses matplotlib's object API (no pyplot), so it never touches the global backend
and renders headless.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lrgate.core.outputs import write_atomic
from lrgate.core.race_plan import LOSS_RUNAWAY, SHORT_FROZEN_RANKING, Race, lower_is_better
from lrgate.core.suggest import Suggestion, warmup_points

LOSS_COLOR, GRAD_COLOR = "tab:blue", "tab:orange"
MIN_COLOR, MAX_COLOR = "red", "green"


def _limits(values: np.ndarray) -> tuple[float, float]:
    """y-limits that show ``values`` with a little room (the bowl, not the divergence)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(lo) * 0.05, 1e-12)
    return lo - pad, hi + pad


def review_figure(s: Suggestion, *, show_maxima: bool = False) -> Figure:
    """Draw the review plot of ``s`` and return the figure (display it, or save it with :func:`save_review`)."""
    df = s.frame
    lrs = df["lrs"].to_numpy()
    if s.race is None:
        fig = Figure(figsize=(9, 5.4), dpi=110, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = Figure(figsize=(9, 8.4), dpi=110, layout="constrained")
        ax, ax_race = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
        race_panel(ax_race, s.race)
        for name, lr in s.race.rule_picks.items():
            ax.axvline(lr, color="0.6", lw=0.8, ls=(0, (2, 2)))
            _vertical_label(ax, name, lr, top=True, color="0.4")
    ax_grad = ax.twinx()

    ax.plot(lrs, df["loss"], color=LOSS_COLOR, lw=1.8, label="loss (smoothed)")
    ax_grad.plot(lrs, df["loss_grad"], color=GRAD_COLOR, lw=1.2, label="loss gradient (per decade)")
    ax.scatter(lrs, df["min_loss"], color=MIN_COLOR, s=28, zorder=3, label="minima")
    ax_grad.scatter(lrs, df["min_grad"], color=MIN_COLOR, marker="v", s=28, zorder=3)
    if show_maxima:
        ax.scatter(lrs, df["max_loss"], color=MAX_COLOR, s=28, zorder=3, label="maxima")
        ax_grad.scatter(lrs, df["max_grad"], color=MAX_COLOR, marker="^", s=28, zorder=3)

    ax.axvspan(s.cutoff_lr, lrs[-1], color="0.5", alpha=0.12, lw=0, label=f"within {s.margin:g} decade(s) of upturn")
    if s.turned_up:
        ax.axvline(s.upturn_lr, color="0.35", ls="--", lw=1, label=f"upturn {s.upturn_lr:.1e}")
    if s.slice is None:
        ax.axvline(s.lr, color="black", lw=2, label=f"chosen lr {s.lr:.1e}")
    else:
        lo, hi = s.slice
        ax.axvspan(lo, hi, color="tab:purple", alpha=0.15, lw=0)
        ax.axvline(lo, color="tab:purple", lw=1.5, ls=":", label=f"slice lo {lo:.1e}")
        ax.axvline(hi, color="tab:purple", lw=2, label=f"slice hi {hi:.1e}")

    # Scale both axes to the part between the smoothed loss's warm-up and the upturn: the divergence (and
    # the first few, barely averaged points) would otherwise flatten the bowl to a line.
    end = int(np.searchsorted(lrs, s.upturn_lr, side="right"))
    start = min(warmup_points(len(lrs)), max(end - 2, 0))
    head = df.iloc[start : max(end, start + 2)]
    ax.set_ylim(*_limits(head["loss"].to_numpy()))
    ax_grad.set_ylim(*_limits(head["loss_grad"].to_numpy()))
    ax.set_xscale("log")
    # a race's candidates may reach past the test's end (race_plan.REACH_DECADES): the shared axis shows them all
    right = max([lrs[-1], *(s.race.candidates if s.race is not None else ())])
    ax.set_xlim(lrs[0], right if right == lrs[-1] else right * 10**0.15)
    if s.race is None:
        ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss", color=LOSS_COLOR)
    ax_grad.set_ylabel("d loss / d log10(lr)", color=GRAD_COLOR)
    ax.grid(True, which="major", alpha=0.3)

    if s.race is None:
        how = s.method
    elif s.race.head_lr is None:
        how = f"race of {len(s.race.candidates)} around the curve rules (dotted)"
    else:
        how = f"race of {len(s.race.candidates)} around the frozen stage's lr {s.race.head_lr:.1e} (dashed, below)"
    title = f"{s.state}: {s.describe()}   [{how}, noise {s.noise}]"
    if s.warnings:
        title += f"\n{len(s.warnings)} warning(s): {s.warnings[0]}" + (" ..." if len(s.warnings) > 1 else "")
    ax.set_title(title, fontsize=10, loc="left", wrap=True)
    handles, labels = ax.get_legend_handles_labels()
    grad_handles, grad_labels = ax_grad.get_legend_handles_labels()
    fig.legend(handles + grad_handles, labels + grad_labels, loc="outside lower center", ncols=4, fontsize=8)
    return fig


def race_panel(ax, race: Race) -> None:
    """The race under the curve: each trial against its lr, one line per rung, by what its rung ranked it by
    (race_plan.rung_ranking: the score, or validation loss for a frozen model's rungs shorter than the stage; the
    last rung's on the left axis, the other one, if the rungs differ, on a second axis at the right; a loss on a log
    scale), the winner ringed, and a red cross on each trial of a compressed rung whose loss ran away (ranked after
    the sound ones whatever it scored: race_plan.LOSS_RUNAWAY)."""
    rungs = sorted({t.rung for t in race.trials})
    rank_of = {rung: race.ranked_by(rung) for rung in rungs}
    axes = {rank_of[rungs[-1]]: ax} if rungs else {race.score: ax}

    def axis_for(rank: str):
        if rank not in axes:
            axes[rank] = ax.twinx()
        return axes[rank]

    for rung in rungs:
        trials = [t for t in race.trials if t.rung == rung]
        length = trials[0].iterations
        rank = rank_of[rung]
        on = axis_for(rank)
        ok = sorted((t for t in trials if t.scored(rank) is not None), key=lambda t: t.lr)  # a line in lr
        on.plot(
            [t.lr for t in ok],
            [t.scored(rank) for t in ok],
            marker="o",
            ms=6,
            lw=1,
            color=f"C{rung}",  # one colour per rung, whichever axis it is on
            label=f"rung {rung}: {len(trials)} x {length} it, by {rank}" + (" (right)" if on is not ax else ""),
        )
        for t in trials:
            if t.scored(rank) is None:
                _vertical_label(ax, "diverged", t.lr, top=False, color="tab:red")
    for i, t in enumerate(race.ran_away):
        axis_for(rank_of[t.rung]).plot(
            t.lr,
            t.scored(rank_of[t.rung]),
            "x",
            ms=10,
            mew=2,
            color="tab:red",
            label=f"loss ran away (> {LOSS_RUNAWAY:g}x the rung's best)" if i == 0 else "_",
        )
    if race.head_lr is not None:  # after unfreeze: the candidates lie around the lr the head trained with
        ax.axvline(race.head_lr, color="0.4", lw=1, ls="--", label=f"frozen stage's lr {race.head_lr:.1e}")
    best = race.winning_trial
    if best is not None and best.scored(rank_of[best.rung]) is not None:
        axis_for(rank_of[best.rung]).plot(
            race.winner,
            best.scored(rank_of[best.rung]),
            "o",
            ms=14,
            mfc="none",
            mec="black",
            mew=2,
            label=f"winner {race.winner:.1e}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    for rank, a in axes.items():
        lower = lower_is_better(rank)
        a.set_ylabel(f"{rank} after the trial" + (" (lower is better)" if lower else " (higher is better)"))
        values = [y for line in a.get_lines() for y in line.get_ydata()]
        if rank == SHORT_FROZEN_RANKING and values and min(values) > 0:
            a.set_yscale("log")  # a loss that ran away is orders of magnitude above the others
    ax.set_title(
        f"race: {race.iterations} iterations = {race.cost_in_trainings:.2f} trainings of the stage "
        f"({race.stage_iterations} it), {race.seconds:.0f} s",
        fontsize=9,
        loc="left",
    )
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = [], []
    for a in axes.values():
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    list(axes.values())[-1].legend(handles, labels, loc="best", fontsize=8)  # the twin axis is drawn on top


def _vertical_label(ax, text: str, lr: float, *, top: bool, color: str) -> None:
    """A small upright label at ``lr``, hanging from the top of the axes or standing on its bottom."""
    ax.annotate(
        text,
        (lr, 1.0 if top else 0.02),
        xycoords=("data", "axes fraction"),
        fontsize=7,
        rotation=90,
        va="top" if top else "bottom",
        ha="right" if top else "center",
        color=color,
    )


def save_review(
    s: Suggestion,
    png: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    *,
    show_maxima: bool = False,
) -> tuple[Path, Path]:
    """Write the review plot (PNG) and the DataFrame behind it (CSV, default: beside the PNG), atomically.

    Returns the two paths written.
    """
    png = Path(png)
    csv = png.with_suffix(".csv") if csv is None else Path(csv)
    fig = review_figure(s, show_maxima=show_maxima)
    write_atomic(png, lambda f: fig.savefig(f, format="png"))
    write_atomic(csv, lambda f: s.frame.to_csv(f, index_label="iteration"), mode="w")
    return png, csv


def unread_curve_figure(lrs: np.ndarray, losses: np.ndarray, title: str) -> Figure:
    """The recorded loss of a range test that could not be read into a suggestion, against lr on a log axis
    (finite points only), with ``title`` saying why: the gate's graph for the person who decides instead."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    fig = Figure(figsize=(9, 5.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ok = np.isfinite(lrs) & (lrs > 0) & np.isfinite(losses)
    if ok.any():
        ax.plot(lrs[ok], losses[ok], color=LOSS_COLOR, lw=1.8, marker=".", ms=4, label="loss (as recorded)")
        ax.set_xscale("log")
        # a finite divergence (1e6, say) would flatten the rest: cap the axis at a Tukey fence of the losses
        q25, q75 = np.percentile(losses[ok], [25, 75])
        shown = losses[ok][losses[ok] <= q75 + 3 * (q75 - q25)]
        ax.set_ylim(*_limits(shown if len(shown) else losses[ok]))
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite loss was recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss", color=LOSS_COLOR)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=10, loc="left", wrap=True)
    return fig


def save_unread_curve(lrs: np.ndarray, losses: np.ndarray, png: str | os.PathLike, title: str) -> Path:
    """Write :func:`unread_curve_figure` to ``png`` atomically; return the path."""
    png = Path(png)
    fig = unread_curve_figure(lrs, losses, title)
    write_atomic(png, lambda f: fig.savefig(f, format="png"))
    return png
