"""The forum post's own API, for a notebook: ``find_optimal_lr(learn)`` on a fastai 2.8 Learner.

Given how long the next stage trains (``epochs=``), both functions also race a handful of candidate lrs around
the curve rules' picks in short trials of that schedule (:mod:`lrgate.training.race`) and return the winner; without it
they read the curve alone.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Literal

import pandas as pd
from fastai.learner import Learner

from lrgate.core.suggest import DEFAULT_METHOD, DEFAULT_NOISE, Suggestion, format_choices, suggest
from lrgate.training.learner_state import detect_state
from lrgate.training.race import race_suggestion
from lrgate.training.range_test import last_range_test, run_range_test


def suggest_for_learner(
    learn: Learner,
    *,
    noise: int = DEFAULT_NOISE,
    margin: float | None = None,
    method: str = DEFAULT_METHOD,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    rerun: bool = False,
    epochs: float | None = None,
    budget: float = 1.0,
    score: str | None = None,
    head_lr: float | slice | None = None,
    log: Callable[[str], None] = print,
) -> Suggestion:
    """Read the Learner's state, run ``lr_find`` unless its last fit was one (or ``rerun``), and suggest; with
    ``epochs``, race candidate lrs in short trials of ``fit_one_cycle(epochs, ...)`` and suggest the winner.

    Parameters
    ----------
    learn : Learner
        Any fastai 2.8 Learner; its freeze state is read from its optimizer. It comes back unchanged (the range
        test and the race restore weights, optimizer, callbacks and random state).
    noise, margin, method :
        See :func:`lrgate.core.suggest.suggest`.
    start_lr, end_lr, num_it, stop_div :
        The range test's (``Learner.lr_find``).
    rerun : bool
        Run a new range test even if the Learner's last fit was one.
    epochs : float, optional
        How long the next stage trains. Given, the race runs; None reads the curve alone.
    budget : float
        The race's cost in trainings of that stage (default one; at least two range tests on small data).
    score : str, optional
        What the race ranks trials by: ``valid_loss`` or a metric's name; default the Learner's first metric.
    head_lr : float or slice, optional
        After ``unfreeze`` / ``freeze_to``: the lr the frozen stage trained the head with (a slice: its upper end).
        The race's candidates then lie around it (a decade below to a decade above) rather than below the range
        test's end: the evidence that held best on the recorded tasks (README, "Efficacy"). Ignored without
        ``epochs``, and when the Learner takes one lr (frozen, or a model of one parameter group).
    log : callable
        Where the race's progress lines go.

    Returns
    -------
    Suggestion
        ``.value`` is the lr or ``slice`` to train with; after a race, ``.race`` holds every trial.

    Examples
    --------
    >>> s = suggest_for_learner(learn, epochs=3)  # doctest: +SKIP
    >>> learn.fit_one_cycle(3, s.value)  # doctest: +SKIP
    """
    state = detect_state(learn)
    curve = None if rerun else last_range_test(learn)
    if curve is None:
        curve = run_range_test(learn, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)
    s = suggest(*curve, state.state, method=method, noise=noise, margin=margin, n_groups=state.n_groups)
    s = dataclasses.replace(s, warnings=state.warnings + s.warnings)
    if epochs is None:
        return s
    return race_suggestion(
        learn,
        s,
        curve,
        epochs=epochs,
        range_test_iterations=num_it,
        budget=budget,
        score=score,
        head_lr=head_lr,
        log=log,
    )


def find_optimal_lr(
    learn: Learner,
    noise: int = DEFAULT_NOISE,
    show_df: Literal["head", "tail", "all"] | None = None,
    show_min_values: bool = False,
    *,
    margin: float | None = None,
    method: str = DEFAULT_METHOD,
    show_maxima: bool = False,
    save_plot: str | os.PathLike | None = None,
    epochs: float | None = None,
    budget: float = 1.0,
    head_lr: float | slice | None = None,
    **range_test: float,
) -> float | slice:
    """Suggest an lr (frozen) or a ``slice`` (unfrozen / freeze_to) for ``learn``, print and plot the choices.

    Parameters
    ----------
    learn : Learner
        Any fastai 2.8 Learner; its freeze state is read from its optimizer.
    noise : int
        Extrema filter order (default 3; higher filters spikes harder).
    show_df : {"head", "tail", "all"}, optional
        Also print that part of the curve's DataFrame.
    show_min_values : bool
        Also print the DataFrame rows that hold a minimum of either curve.
    margin, method :
        See :func:`lrgate.core.suggest.suggest`.
    show_maxima : bool
        Mark maxima (green) on the plot.
    epochs, budget, head_lr :
        How long the next stage trains, the race's cost in trainings of it, and (after unfreeze) the lr the frozen
        stage trained with: see :func:`suggest_for_learner`.
    save_plot : path, optional
        Also write the plot (PNG) and its data (CSV beside it).
    **range_test :
        ``start_lr``, ``end_lr``, ``num_it`` for ``lr_find`` when one is run.

    Returns
    -------
    float or slice
        What ``fit_one_cycle`` takes.
    """
    from lrgate.core.plot import review_figure, save_review

    s = suggest_for_learner(
        learn, noise=noise, margin=margin, method=method, epochs=epochs, budget=budget, head_lr=head_lr, **range_test
    )
    print(format_choices(s))
    with pd.option_context("display.max_rows", None, "display.width", 120):
        if show_df in ("head", "tail"):
            print(getattr(s.frame, show_df)(10))
        elif show_df == "all":
            print(s.frame)
        if show_min_values:
            print(s.frame[s.frame[["min_loss", "min_grad"]].notna().any(axis=1)])
    if save_plot is not None:
        save_review(s, save_plot, show_maxima=show_maxima)
    if _in_ipython():
        from IPython.display import display

        display(review_figure(s, show_maxima=show_maxima))
    return s.value


def _in_ipython() -> bool:
    """True inside a running IPython/Jupyter shell, where a figure can be shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None
