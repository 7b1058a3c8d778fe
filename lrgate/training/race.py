"""Run the race on a fastai Learner: short ``fit_one_cycle`` trials of candidate lrs, from one start, kept by
successive halving (the plan and the record: :mod:`lrgate.core.race_plan`).

Every trial starts from the same weights, optimizer state, random state and batch order (a
:class:`LearnerSnapshot` taken before the first trial), trains the stage's own schedule compressed to its length
(:class:`CompressedSchedule`), and is scored on the validation set. The Learner comes back exactly as it went in:
weights, optimizer state, freeze state, callbacks, Recorder, and the global and DataLoader random states, so the
stage that follows trains as it would have without a race.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.core import Callback, CancelTrainException
from fastai.learner import Learner
from fastcore.foundation import L

from lrgate.core.race_plan import (
    Race,
    Trial,
    affordable,
    budget_iterations,
    candidate_lrs,
    next_rung,
    plan_rungs,
    race_winner,
    rule_picks,
    usable_head_lr,
)
from lrgate.core.suggest import SLICE_RATIO, Suggestion

Log = Callable[[str], None]


class CompressedSchedule(Callback):
    """Trains ``iterations`` batches in all, with the fit's schedule (one cycle) spread over exactly those.

    ``fit_one_cycle(ceil(iterations / len(dl)), ...)`` with this callback: every epoch but the last trains in full,
    the last stops at the quota, and the schedule's position is this callback's count, not fastai's per-epoch one.
    """

    order = -5  # after TrainEvalCallback (-10) resets pct_train, before ParamScheduler (60) reads it

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def before_fit(self) -> None:
        self.done = 0

    def before_batch(self) -> None:
        if not self.training:
            return
        if self.done >= min(self.iterations, (self.epoch + 1) * self.n_iter):
            raise CancelTrainException()
        self.learn.pct_train = self.done / self.iterations

    def after_batch(self) -> None:
        if self.training:
            self.done += 1


@dataclass
class LearnerSnapshot:
    """What a fit changes on a Learner, kept in memory so that any number of fits can be undone."""

    attributes: dict[str, Any]
    callbacks: list
    callback_attributes: list[dict[str, Any]]
    model: dict[str, torch.Tensor]
    modes: list[bool]
    requires_grad: list[bool]
    opt: Any
    recorder: dict[str, list]
    rng: tuple
    loader_rngs: list

    @classmethod
    def take(cls, learn: Learner) -> LearnerSnapshot:
        model = learn.model
        recorder = getattr(learn, "recorder", None)
        return cls(
            attributes=dict(learn.__dict__),
            callbacks=list(learn.cbs),
            callback_attributes=[dict(cb.__dict__) for cb in learn.cbs],  # the range-test marker's flag, say
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            modes=[m.training for m in model.modules()],
            requires_grad=[p.requires_grad for p in model.parameters()],
            opt=None if learn.opt is None else copy.deepcopy(learn.opt.state_dict()),
            recorder={k: list(getattr(recorder, k, [])) for k in ("lrs", "iters", "losses", "values")},
            rng=_rng_state(),
            loader_rngs=[dl.rng.getstate() for dl in _loaders(learn)],
        )

    def restore(self, learn: Learner) -> None:
        """Put the Learner back as it was when the snapshot was taken (the snapshot stays reusable)."""
        for key in [k for k in learn.__dict__ if k not in self.attributes]:
            del learn.__dict__[key]
        learn.__dict__.update(self.attributes)
        learn.cbs = L(self.callbacks)
        for cb, attributes in zip(self.callbacks, self.callback_attributes, strict=True):
            cb.__dict__.clear()
            cb.__dict__.update(attributes)
        learn.model.load_state_dict(self.model)
        for module, mode in zip(learn.model.modules(), self.modes, strict=True):
            module.training = mode
        for p, flag in zip(learn.model.parameters(), self.requires_grad, strict=True):
            p.requires_grad_(flag)
        if self.opt is not None:
            learn.opt.load_state_dict(copy.deepcopy(self.opt))
        recorder = getattr(learn, "recorder", None)
        if recorder is not None:
            for key, values in self.recorder.items():
                setattr(recorder, key, list(values))
        _set_rng_state(self.rng)
        for dl, state in zip(_loaders(learn), self.loader_rngs, strict=True):
            dl.rng.setstate(state)


def _loaders(learn: Learner) -> list:
    return [dl for dl in learn.dls.loaders if hasattr(dl, "rng")]


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()  # noqa: NPY002  (fastai seeds it)


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, np_state, py_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)


def stage_length(learn: Learner, epochs: float) -> int:
    """Iterations of one training of the stage: ``epochs`` over the Learner's training batches (at least one)."""
    return max(1, round(epochs * len(learn.dls.train)))


def default_score(learn: Learner) -> str:
    """The Learner's first metric (accuracy, say), or ``valid_loss`` when it has none."""
    names = [m.name for m in learn.metrics]
    return str(names[0]) if names else "valid_loss"


def run_trial(learn: Learner, value: float | slice, iterations: int, score: str) -> tuple[float, float | None]:
    """One trial from the Learner's current state: ``(valid_loss, metric)``, NaN loss when training diverged."""
    epochs = math.ceil(iterations / len(learn.dls.train))
    with learn.no_logging():
        learn.fit_one_cycle(epochs, value, cbs=CompressedSchedule(iterations))
    # The last epoch's record ends with the validation loss and metrics (a cut epoch drops its train loss).
    names = ["valid_loss", *(m.name for m in learn.metrics)]
    values = dict(zip(names, learn.recorder.values[-1][-len(names) :], strict=True))
    metric = None if score == "valid_loss" else values.get(score)
    return float(values["valid_loss"]), None if metric is None else float(metric)


def race(
    learn: Learner,
    picks: dict[str, float],
    tested_range: tuple[float, float],
    *,
    epochs: float,
    range_test_iterations: int,
    budget: float = 1.0,
    ratio: float | None = None,
    score: str | None = None,
    candidates: Sequence[float] | None = None,
    head_lr: float | slice | None = None,
    log: Log = print,
) -> Race:
    """Race candidate lrs around the curve rules' ``picks`` (after unfreeze, around ``head_lr`` when given) on
    ``learn``; the Learner comes back unchanged.

    Parameters
    ----------
    learn : Learner
        Any fastai Learner, frozen or not; its optimizer must exist (a range test creates it).
    picks : dict
        Each curve rule's lr (a slice's upper end) by name: they set the candidates' span and go in the record.
    tested_range : (float, float)
        The range test's first and last lr: candidates start inside it and, before unfreeze, reach half a decade
        past its end; after unfreeze they lie within two decades below its end, unless ``head_lr`` is given (then
        around it, wherever that lies: :func:`~lrgate.core.race_plan.candidate_lrs`).
    epochs : float
        How long the stage trains (``fit_one_cycle(epochs, ...)``): trials are that schedule, compressed.
    range_test_iterations : int
        The range test's length: on small data the budget is at least two range tests.
    budget : float
        The race's cost in trainings of the stage (default one).
    ratio : float, optional
        After ``unfreeze`` / ``freeze_to``: race ``slice(lr / ratio, lr)``; None races one lr.
    score : str, optional
        ``valid_loss`` or a metric's name; default :func:`default_score`.
    candidates : sequence of float, optional
        The lrs to race, instead of those spanning ``picks``.
    head_lr : float or slice, optional
        After ``unfreeze`` / ``freeze_to``: the lr the frozen stage trained with (a slice: its upper end); the
        candidates then span :data:`~lrgate.core.race_plan.HEAD_SPAN_DECADES` around it (the record keeps it).
        Ignored when the race is not a slice's (before unfreeze, or a model of one parameter group), when
        ``candidates`` are given, and when it is not a positive finite number.

    Raises
    ------
    RaceError
        A stage with no iterations, a bad budget, or no pick to race around.
    """
    started = time.perf_counter()
    score = score or default_score(learn)
    stage_iterations = stage_length(learn, epochs)
    budget_its = budget_iterations(stage_iterations, range_test_iterations, budget)
    sliced = ratio is not None  # after unfreeze / freeze_to: the plan's rules for a slice
    # the record keeps head_lr only where it spans the candidates
    head_lr = usable_head_lr(head_lr) if sliced and candidates is None else None
    if candidates is None:
        spanned = candidate_lrs(list(picks.values()), tested_range, sliced=sliced, head_lr=head_lr)
        candidates = affordable(spanned, stage_iterations, budget_its)
    alive = list(candidates)
    plan = plan_rungs(len(alive), stage_iterations, budget_its)
    around = "" if head_lr is None else f" around the frozen stage's lr {head_lr:.1e}"
    log(
        f"race: {len(alive)} candidates ({alive[0]:.1e} .. {alive[-1]:.1e}){around}, rungs "
        + ", ".join(f"{r.candidates} x {r.iterations} it" for r in plan.rungs)
        + f" (one training: {stage_iterations} it)"
    )
    snapshot = LearnerSnapshot.take(learn)
    n_valid = len(learn.dls.valid.dataset) if hasattr(learn.dls.valid, "dataset") else 0
    trials: list[Trial] = []
    try:
        for k, rung in enumerate(plan.rungs):
            rung_trials = []
            for lr in alive:
                snapshot.restore(learn)
                t0 = time.perf_counter()
                value = lr if ratio is None else slice(lr / ratio, lr)
                loss, metric = run_trial(learn, value, rung.iterations, score)
                trial = Trial(k, lr, rung.iterations, loss, metric, round(time.perf_counter() - t0, 2))
                rung_trials.append(trial)
                shown = "diverged" if trial.diverged else f"valid_loss {loss:.4g}"
                log(f"race rung {k}: lr {lr:.2e}, {rung.iterations} it: {shown}" + _metric_text(score, metric))
            trials += rung_trials
            if k + 1 < len(plan.rungs):
                keep = plan.rungs[k + 1].candidates
                alive = next_rung(rung_trials, keep, score, n_valid, stage_iterations, sliced)
        winner, warnings = race_winner(trials, score, n_valid, stage_iterations, sliced)
    finally:
        snapshot.restore(learn)
    result = Race(
        candidates=tuple(sorted({t.lr for t in trials})),
        trials=tuple(trials),
        winner=winner,
        ratio=ratio,
        score=score,
        rule_picks=dict(picks),
        stage_iterations=stage_iterations,
        budget_iterations=plan.budget_iterations,
        seconds=round(time.perf_counter() - started, 2),
        warnings=warnings,
        head_lr=head_lr,
    )
    log(
        f"race: winner {winner:.2e} after {result.iterations} it "
        f"({result.cost_in_trainings:.2f} trainings of the stage, {result.seconds:.1f} s)"
    )
    return result


def race_suggestion(
    learn: Learner,
    s: Suggestion,
    curve: tuple[np.ndarray, np.ndarray],
    *,
    epochs: float,
    range_test_iterations: int,
    budget: float = 1.0,
    score: str | None = None,
    head_lr: float | slice | None = None,
    log: Log = print,
) -> Suggestion:
    """Race around the curve's suggestion ``s``: every curve rule's pick sets the span (after ``unfreeze``, the
    frozen stage's ``head_lr`` does, when given); after ``unfreeze`` the slice keeps ``s``'s ratio. Returns ``s``
    with the winner as its lr (or slice) and the race as its record."""
    n_groups = None if learn.opt is None else len(learn.opt.param_lists)
    picks = {s.method: s.lr, **rule_picks(*curve, s.state, noise=s.noise, n_groups=n_groups)}
    ratio = None if s.slice is None else (s.slice[1] / s.slice[0] if s.slice[0] > 0 else SLICE_RATIO)
    result = race(
        learn,
        picks,
        s.tested_range,
        epochs=epochs,
        range_test_iterations=range_test_iterations,
        budget=budget,
        ratio=ratio,
        score=score,
        head_lr=head_lr,
        log=log,
    )
    return dataclasses.replace(
        s,
        lr=result.winner,
        slice=None if ratio is None else (result.winner / ratio, result.winner),
        race=result,
        warnings=s.warnings + result.warnings,
    )


def _metric_text(score: str, metric: float | None) -> str:
    return "" if metric is None or score == "valid_loss" else f", {score} {metric:.4g}"
