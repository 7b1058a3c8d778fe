"""The race's plan and its record, pure: which lrs to try, how long each trial trains, and who won.

A range test reads the curve; the curve cannot say how long the stage trains, and no curve rule transfers from one
task to the next (README, "Efficacy"). The race adds evidence at a cost the caller sets: a handful of candidate lrs
spanning where the curve rules disagree (after unfreeze, around the lr the frozen stage trained the head with, when
known), each trained from the same start with the stage's own schedule
(``fit_one_cycle``) compressed to a budget, kept by successive halving. This module knows neither fastai nor
Prefect: :mod:`lrgate.training.race` runs the trials.

Successive halving here restarts each rung from the same weights with a longer compressed schedule (a one-cycle
schedule cut short is not a shorter one-cycle schedule), rung ``k`` training ``ETA**k`` times as long as rung 0 and
keeping the best ``1/ETA``. The plan that gives the last rung the longest trials within the budget wins; a trial is
never longer than the stage's real training (there it is the real training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lrgate.core.errors import CurveError, LrgateError
from lrgate.core.suggest import suggest

ETA = 3  # each rung keeps the best third (rounded up), and trains them three times as long
STEP_DECADES = 0.5  # candidates lie half a decade apart (1e-3, 3.2e-3, ...: the benchmark grid's spacing)...
MAX_CANDIDATES = 10  # ...unless the span is wider: then the step widens to keep at most this many
MIN_CANDIDATES = 4
EARLY_SHARE = 0.25  # picks in this first share of the test (log lr) set no span (suggest.BOWL_EARLY_SHARE)
MIN_TRIAL_ITERATIONS = 8  # below this a trial says nothing about the lr
RANGE_TESTS_FLOOR = 2.0  # on data so small that one training is shorter, the budget is two range tests
# The curve rules whose lowest pick starts the candidates' span: the three with the lowest regret on the tuning
# split (lrgate's bowl, fastai's minimum and slide); any that cannot read the curve is skipped.
SPAN_RULES = ("bowl", "minimum", "slide")
# Before unfreeze the candidates reach this far past the range test's last lr: a one-cycle training warms up and
# anneals, so it survives lrs above where the test's constant climb diverged, and its best lr can lie there (letters
# with SGD: 10, the test ending at 3 to 4). Since 0.10.0, chosen by racing the 114 curves per stage of the tuning
# split and the eight held-out splits before the ninth with and without it (budget 1: frozen mean regret 1.66 ->
# 1.03, worst 14.4 -> 10.3, better on six of the nine, worse on the fresh and third). Only 6 of those 114 winners
# lie past the test's end (letters with SGD); the rest of the gain is winners that moved with the extra candidate's
# shorter rungs, as much draw as design. After unfreeze it lost (2.42 -> 2.63, worst 14.3 -> 22.8: one more
# candidate shortens every trial, and short trials there favour low lrs whatever is on offer), so a sliced race
# without the frozen stage's lr (HEAD_SPAN_DECADES) stops at the test's end.
REACH_DECADES = 0.5
# After unfreeze the candidates start no lower than this many decades below the range test's end (its lattice
# point): there the best lr of the whole training lies near where the test diverged (within two decades below it in
# 100 of the 129 unfrozen curves of the tuning split and the first nine held-out splits, above it in 23, further
# below in 6), and each candidate fewer lengthens every trial, where short trials favour low lrs (the rung that
# dropped the best was the first, 11 to 15 iterations, far more often than the pick: best of the last rung 1.80
# points below the best, best of all candidates 0.41). Since 0.11.0, chosen by racing those 129 curves with it
# (budget 1: unfrozen mean regret 2.25 -> 1.70, worst 14.3 both; better on seven of the ten, worse on the tuning
# split 1.47 -> 2.19 and the first held-out 2.32 -> 3.37, where Lite0 with photos or shapes after unfreeze wants an
# lr 2.5 decades below the test's end). Reaching half a decade past the end too (for letters with SGD, best 10)
# lost: 1.84 mean, worst 33.5. Before unfreeze the short trials rank by loss and the best lr spreads further (the
# span from the curve rules stays).
SLICE_SPAN_DECADES = 2.0
# After unfreeze, when the lr the frozen stage trained the head with is known (the pipeline's gate 1, or ``head_lr=`` in
# the API), the candidates span these decades around it instead (on the lattice, from its nearest point), whatever the
# curve says, past the range test's end if the head's lr is high, though never above :data:`MAX_LR`: fastai's own
# ``fine_tune`` ties the body's lr to the head's (half of it), and the recorded grids agree. The whole training's best
# unfrozen lr lies within a decade of the frozen stage's best on 51 of 53 tasks (median ratio 1); around 0.11.0's frozen
# race winner, five candidates hold the best lr of the whole training (within 0.02 points on average) on the 144
# unfrozen curves of the tuning split and the first ten held-out splits, where 0.11.0's window below the test's end held
# it within 0.48. Since 0.12.0, chosen by racing those 144 curves (budget 1: unfrozen mean regret 1.82 -> 1.31, worst
# 14.3 -> 11.7; better on ten of the eleven splits). A decade below to half a decade above scored 1.17 (worst 13.1), all
# of the difference on the EfficientNet-Lite0 tasks, where a thread count alone moves a winner; on the 111 curves of the
# tiny CNN it scored 0.97 against 0.89 and missed by more than 3 points on 12 against 8, and the best lr lay outside it
# on more curves (0.23 points).
HEAD_SPAN_DECADES = (-1.0, 1.0)
# No candidate lies above this lr, whatever the frozen stage's lr or the curve: fastai's ``lr_find`` stops there by
# default and so does the guard's default ``lr_range`` (a winner above it waits for a person). Before 0.13.0 a sliced
# race around a frozen lr of 10 (letters with SGD) raced up to 100, and a frozen one up to half a decade past the
# test's end: of the 318 races at budget 1 on the tuning split and the first eleven held-out splits, 50 tried lrs
# above 10 (6 frozen, 44 after unfreeze) and none won with one, while each such candidate shortened every trial. The
# lattice points above it are dropped, not moved below the span (fewer candidates, longer trials). Since 0.13.0;
# racing the 54 curves whose candidates it changes (and the unfrozen curves after a changed frozen winner) at budget
# 1: mean regret 1.09 -> 1.09 frozen, 1.17 -> 1.12 unfrozen over those 159 curves per stage, worst unchanged (10.3,
# 10.5); 24 winners moved, both ways (draws of the kind a thread count makes), the eleventh split after unfreeze
# 0.18 / 2.4 -> 0.39 / 3.1.
MAX_LR = 10.0
# Compressed trials favour low lrs (short-horizon bias): within this many standard errors of the best metric a
# compressed rung that ranks by a metric (after unfreeze: SHORT_FROZEN_RANKING ranks a frozen one by loss) counts
# trials as level and ranks the higher lr first; every compressed rung keeps the next higher lr above its best for
# the next, longer rung (survivors). Before 0.14.0, 1 (2 had leaned too far on the third split with 0.5.0's rungs);
# 0.12.0's candidates around the head's lr put the best whole-training lr among them, and the first rung dropped it:
# 3 since 0.14.0, chosen by racing the 30 unfrozen budget-1 curves of the tuning split and the first twelve held-out
# splits whose rung survivors it changes (the rest keep their races; a redraw of 0.13.0 on the same 30 reproduced
# all but two Lite0 winners): unfrozen mean regret 1.15 -> 0.94 over those 174 curves, worst unchanged (10.5); 16
# winners better (sixth letters s13 7.8 -> 0.5, seventh letters s17 5.5 -> 0.7, third letters s3 5.1 -> 0), 3 worse
# (eleventh letters s27 0 -> 8.7: 3 leaned to 10 as the upper neighbour and the last rung's lean kept it; fourth
# photos s8 0.4 -> 2.0). Keeping only the level trials, without the upper neighbour, scored 1.09 (worst 9.0).
TIE_STANDARD_ERRORS = 3.0
# After unfreeze the bias is stronger (a short trial punishes a high lr on the pretrained body most, the whole
# schedule lets it settle): the race's winner, when its last rung is shorter than the stage, is the highest lr within
# this many standard errors of that rung's best (race_winner). Since 0.8.0, chosen on the recorded trials of the
# tuning, fresh, third and fifth splits (unfrozen mean regret at 1 -> 3: tuning 1.4 -> 1.5, fresh 1.6 -> 1.1, third
# 2.4 -> 2.1, fifth 1.9 both; 2 gained less, 4 to 6 no more); before unfreeze any lean past 1 lost on every split.
SLICE_PICK_STANDARD_ERRORS = 3.0
# Before unfreeze, a rung shorter than the stage ranks by validation loss, whatever the score (rung_ranking): a short
# trial's accuracy is coarse and can rank against its loss (seventh split, shapes with SGD: in 46-iteration trials 0.1
# led on accuracy while 1 and 3.2, the whole training's best, had the lower losses: 14 points lost), and the loss
# also carries the runaway guard. A rung as long as the stage still ranks by the score. Since 0.9.0, chosen by racing
# the 99 frozen curves of the tuning to seventh splits both ways (mean regret 2.01 -> 1.51, worst 34 -> 14.4; worse
# on the first held-out and third splits, 2.75 -> 4.12 and 0.94 -> 1.71; better on the fresh, fourth and seventh;
# ranking only the level trials by loss: 1.75). After unfreeze the loss ranked worse (from the recorded trials:
# 2.35 -> 2.52), so the score stays.
SHORT_FROZEN_RANKING = "valid_loss"
# In a compressed rung, a trial whose validation loss is more than this many times the rung's best has run away:
# its lr is blowing the model up, even where its short trial's accuracy still looks level or better (confident
# mistakes cost little accuracy and much loss, and the stage's longer training goes on from there). It ranks after
# every sound trial, is never level, and is not the upper neighbour kept. A rung as long as the stage is the stage's
# own training: its metric is the outcome, and it ranks by that alone (a guard there cost the fresh split's
# textures-lite0 task 13 to 21 points: its best lr, 0.1, ends the whole training at twice the lowest loss). Since
# 0.7.0, chosen on the tuning, third, fifth and fresh splits (0.6.0 sent a trial at loss 16.6 on, and it won on
# accuracy: 33.5 points lost; 1.5 rather than 2 also stops a winner at loss 1.19 against 0.70: 13.5 points).
LOSS_RUNAWAY = 1.5
LOWER_IS_BETTER = ("valid_loss", "error_rate", "top_k_error", "perplexity")


class RaceError(LrgateError):
    """A race that cannot be planned: a bad budget or stage length, or no candidate lr."""


@dataclass(frozen=True)
class Rung:
    """One round of the race: ``candidates`` trials of ``iterations`` each."""

    candidates: int
    iterations: int


@dataclass(frozen=True)
class Plan:
    """The rungs, and what they cost against one training of the stage."""

    rungs: tuple[Rung, ...]
    stage_iterations: int
    budget_iterations: int

    @property
    def iterations(self) -> int:
        return sum(r.candidates * r.iterations for r in self.rungs)


@dataclass(frozen=True)
class Trial:
    """One short training: the lr (or the slice's upper end), its length, and how it scored on the validation set."""

    rung: int
    lr: float
    iterations: int
    valid_loss: float
    metric: float | None
    seconds: float

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.valid_loss)

    @classmethod
    def from_dict(cls, d: dict) -> Trial:
        """A trial as :meth:`Race.to_dict` writes it (a diverged loss written as None)."""
        loss = math.nan if d["valid_loss"] is None else d["valid_loss"]
        return cls(d["rung"], d["lr"], d["iterations"], loss, d["metric"], d["seconds"])

    def scored(self, score: str) -> float | None:
        """The trial's ``score`` (``valid_loss`` or its metric); None when it diverged or has none."""
        value = self.valid_loss if score == "valid_loss" else self.metric
        return None if value is None or not math.isfinite(value) or self.diverged else value


@dataclass(frozen=True)
class Race:
    """The race's record: what was tried, what won, what the curve rules picked, and what it cost.

    ``winner`` is an lr (frozen) or a slice's upper end; with ``ratio`` the slice is ``(winner / ratio, winner)``.
    ``head_lr``, after ``unfreeze``: the lr the frozen stage trained with, when the candidates were spanned around it
    (:data:`HEAD_SPAN_DECADES`).
    """

    candidates: tuple[float, ...]
    trials: tuple[Trial, ...]
    winner: float
    ratio: float | None
    score: str
    rule_picks: dict[str, float]
    stage_iterations: int
    budget_iterations: int
    seconds: float
    warnings: tuple[str, ...] = field(default=())
    head_lr: float | None = None  # after unfreeze, the frozen stage's lr the candidates were spanned around

    @property
    def iterations(self) -> int:
        return sum(t.iterations for t in self.trials)

    @property
    def winning_trial(self) -> Trial | None:
        """The winner's trial in the last rung (None when every trial diverged and the lowest lr fell back)."""
        last = self.trials[-1].rung
        return next((t for t in self.trials if t.rung == last and t.lr == self.winner), None)

    def ranked_by(self, rung: int) -> str:
        """What ``rung`` ranked its trials by (:func:`rung_ranking`)."""
        length = next(t.iterations for t in self.trials if t.rung == rung)
        return rung_ranking(self.score, length < self.stage_iterations, self.ratio is not None)

    @property
    def ran_away(self) -> list[Trial]:
        """The trials whose loss ran away (:func:`ran_away`)."""
        return ran_away(self.trials, self.score, self.stage_iterations, sliced=self.ratio is not None)

    @property
    def cost_in_trainings(self) -> float:
        """Iterations trained, as a share of one training of the stage."""
        return self.iterations / self.stage_iterations

    @property
    def value(self) -> float | slice:
        return self.winner if self.ratio is None else slice(self.winner / self.ratio, self.winner)

    def to_dict(self) -> dict:
        return {
            "candidates": list(self.candidates),
            "trials": [
                {
                    "rung": t.rung,
                    "lr": t.lr,
                    "iterations": t.iterations,
                    "valid_loss": t.valid_loss if math.isfinite(t.valid_loss) else None,
                    "metric": t.metric,
                    "seconds": t.seconds,
                }
                for t in self.trials
            ],
            "winner": self.winner,
            "slice_ratio": self.ratio,
            "score": self.score,
            "rule_picks": dict(self.rule_picks),
            "head_lr": self.head_lr,
            "cost": {
                "iterations": self.iterations,
                "seconds": self.seconds,
                "stage_iterations": self.stage_iterations,
                "budget_iterations": self.budget_iterations,
                "trainings": round(self.cost_in_trainings, 3),
            },
            "warnings": list(self.warnings),
        }


def budget_iterations(stage_iterations: int, range_test_iterations: int, trainings: float = 1.0) -> int:
    """The race's budget: ``trainings`` trainings of the stage, or two range tests where that is less.

    Raises
    ------
    RaceError
        A stage or budget that is not positive.
    """
    if stage_iterations < 1:
        raise RaceError(f"the stage trains {stage_iterations} iterations: a race needs at least one")
    if not trainings > 0:
        raise RaceError(f"race budget must be a positive number of trainings, got {trainings:g}")
    return int(max(trainings * stage_iterations, RANGE_TESTS_FLOOR * range_test_iterations))


def plan_rungs(n_candidates: int, stage_iterations: int, budget: int, eta: int = ETA) -> Plan:
    """Successive halving over ``n_candidates`` within ``budget`` iterations; trials at most ``stage_iterations``.

    Among plans with 1, 2, ... rungs (each keeping ``ceil(n / eta)``, at least two in the last rung), the one whose
    last rung trains longest wins (ties: fewer rungs, so every candidate is seen longer). A budget too small for
    ``MIN_TRIAL_ITERATIONS`` per trial (or the whole stage, when shorter) still gets one rung of that length: the
    cost then exceeds the budget, and the record says so (:func:`affordable` thins the candidates first).

    Examples
    --------
    >>> plan_rungs(6, 1500, 1500).rungs
    (Rung(candidates=6, iterations=125), Rung(candidates=2, iterations=375))
    >>> plan_rungs(6, 12, 200).rungs  # small data: every candidate trains the stage's full length
    (Rung(candidates=6, iterations=12),)
    """
    if n_candidates < 1:
        raise RaceError("a race needs at least one candidate lr")
    min_trial = min(MIN_TRIAL_ITERATIONS, stage_iterations)  # a whole training is never too short to tell
    best: tuple[int, tuple[Rung, ...]] | None = None
    counts = [n_candidates]
    while math.ceil(counts[-1] / eta) >= 2:
        counts.append(math.ceil(counts[-1] / eta))
    for n_rungs in range(1, len(counts) + 1):
        sizes = counts[:n_rungs]
        # iterations of rung k = base * eta**k, capped at the stage's length
        weight = sum(c * eta**k for k, c in enumerate(sizes))
        base = budget // weight
        rungs = tuple(Rung(c, min(stage_iterations, base * eta**k)) for k, c in enumerate(sizes))
        if rungs[0].iterations < min_trial:
            continue
        if best is None or rungs[-1].iterations > best[0]:
            best = (rungs[-1].iterations, rungs)
    if best is None:
        best = (0, (Rung(n_candidates, min_trial),))
    return Plan(best[1], stage_iterations, budget)


def affordable(candidates: Sequence[float], stage_iterations: int, budget: int) -> tuple[float, ...]:
    """``candidates`` thinned evenly (both ends kept) to as many as one rung of the shortest trials fits in
    ``budget``; all of them when they fit."""
    n = max(2, budget // min(MIN_TRIAL_ITERATIONS, stage_iterations))
    if len(candidates) <= n:
        return tuple(candidates)
    keep = np.unique(np.round(np.linspace(0, len(candidates) - 1, n)).astype(int))
    return tuple(candidates[i] for i in keep)


def usable_head_lr(head_lr: float | slice | None) -> float | None:
    """The frozen stage's lr to span a sliced race around (a slice: its upper end, which trained the head); None
    when there is none, or it is not a positive finite number."""
    if isinstance(head_lr, slice):
        head_lr = head_lr.stop
    return head_lr if head_lr is not None and math.isfinite(head_lr) and head_lr > 0 else None


def candidate_lrs(
    picks: Sequence[float],
    tested_range: tuple[float, float],
    *,
    step: float = STEP_DECADES,
    max_candidates: int = MAX_CANDIDATES,
    min_candidates: int = MIN_CANDIDATES,
    sliced: bool = False,
    head_lr: float | slice | None = None,
) -> tuple[float, ...]:
    """Lrs on a lattice of ``step`` decades (1e-3, 3.2e-3, 1e-2, ... for half decades), from one step below the
    lowest of the curve rules' ``picks`` up to :data:`REACH_DECADES` past the end of the range test (before
    unfreeze); a ``sliced`` race, after ``unfreeze`` / ``freeze_to``, from no lower than
    :data:`SLICE_SPAN_DECADES` below the end, up to the end, or, given ``head_lr`` (the lr the frozen stage trained
    with), :data:`HEAD_SPAN_DECADES` around its nearest lattice point, whatever the picks and the test's end. Never
    above :data:`MAX_LR` (lattice points past it are dropped: around a head's lr of 10, three candidates).

    Why that far: the range test's lr climbs through one batch each, while the stage warms up and anneals (one
    cycle), so the best lr of a whole training often lies above every curve rule's pick, up to where the test
    diverged and past it: a one-cycle training survives an lr whose constant climb blew the test up. A pick in the
    test's first quarter (log lr) sets no span: there the smoothed loss still rests on its first few batches, and a
    rule that picks there found nothing to read (the bowl rule's own reason). Past ``max_candidates`` the step
    widens; under ``min_candidates`` the lattice reaches further down.

    Examples
    --------
    >>> [f"{lr:.2g}" for lr in candidate_lrs([1e-3, 1e-2], (1e-7, 0.5))]
    ['0.00032', '0.001', '0.0032', '0.01', '0.032', '0.1', '0.32', '1']
    >>> [f"{lr:.2g}" for lr in candidate_lrs([1e-3, 1e-2], (1e-7, 0.5), sliced=True)]
    ['0.0032', '0.01', '0.032', '0.1', '0.32']
    >>> [f"{lr:.2g}" for lr in candidate_lrs([1e-3, 1e-2], (1e-7, 0.5), sliced=True, head_lr=3e-3)]
    ['0.00032', '0.001', '0.0032', '0.01', '0.032']
    """
    head_lr = usable_head_lr(head_lr) if sliced else None
    if head_lr is not None:
        center = round(math.log10(head_lr) / step)
        lo, hi = (round(d / step) for d in HEAD_SPAN_DECADES)
        top = min(center + hi, math.floor(math.log10(MAX_LR) / step + 1e-9))  # no lattice point above MAX_LR
        return tuple(float(lr) for lr in 10 ** (step * np.arange(min(center + lo, top - 1), top + 1)))
    first, last = (math.log10(v) for v in tested_range)
    top = min(last + (0.0 if sliced else REACH_DECADES), math.log10(MAX_LR))
    if not any(math.isfinite(p) and p > 0 for p in picks):
        raise RaceError("no curve rule gave an lr to race around")
    early = first + EARLY_SHARE * (last - first)
    read = [p for p in picks if math.isfinite(p) and p > 10**early]
    if not read:
        read = [10 ** (early + step)]  # every rule sat where the curve has nothing to read: race up from there
    low = math.log10(min(read))
    if sliced:  # floor SLICE_SPAN_DECADES below the end's lattice point: low a step above it, start a step below low
        low = max(low, (math.floor(last / step + 1e-9) - round(SLICE_SPAN_DECADES / step) + 1) * step)
    if (top - low) / step + 2 > max_candidates:
        step = (top - low) / (max_candidates - 2)
    end = math.floor(top / step + 1e-9)
    start = math.ceil((low - step) / step - 1e-9)  # the lattice point a step below the lowest pick
    start = max(min(start, end - min_candidates + 1), math.ceil(first / step - 1e-9))  # too few: reach down
    xs = step * np.arange(start, end + 1)
    return tuple(float(lr) for lr in np.unique(np.clip(10**xs, tested_range[0], 10**top)))


def rule_picks(
    lrs: Sequence[float], losses: Sequence[float], state: str, *, noise: int, n_groups: int | None = None
) -> dict[str, float]:
    """Each of :data:`SPAN_RULES`' lr (a slice's upper end) on one curve; a rule that cannot read it is left out."""
    picks = {}
    for name in SPAN_RULES:
        try:
            picks[name] = suggest(lrs, losses, state, method=name, noise=noise, n_groups=n_groups).lr
        except CurveError:
            continue
    return picks


def lower_is_better(score: str) -> bool:
    """True for a loss or an error (``valid_loss``, ``error_rate``, ...), False for a metric such as accuracy."""
    return score in LOWER_IS_BETTER or score.endswith(("_loss", "error"))


OK, RUNAWAY, DIVERGED = 0, 1, 2  # a trial's standing, the first item of its ranking key


def ranking_key(trial: Trial, score: str, runaway: float = math.inf):
    """Sort key, best first: trials whose validation loss stays within ``runaway``, then those above it, then
    diverged ones (or with no score); within each, the score, then the validation loss."""
    value = trial.scored(score)
    if value is None:
        return (DIVERGED, math.inf, math.inf)
    standing = OK if trial.valid_loss <= runaway else RUNAWAY
    return (standing, value if lower_is_better(score) else -value, trial.valid_loss)


def runaway_loss(trials: Sequence[Trial], score: str) -> float:
    """The validation loss above which a trial of this rung has run away: ``LOSS_RUNAWAY`` times the best loss among
    its trials that have a ``score``; infinite (no guard) when none has, or when that loss is not positive (a loss
    that can reach zero or below is not a cross-entropy, and a ratio says nothing there)."""
    losses = [t.valid_loss for t in trials if t.scored(score) is not None]
    return LOSS_RUNAWAY * min(losses) if losses and min(losses) > 0 else math.inf


def ran_away(trials: Sequence[Trial], score: str, stage_iterations: int, sliced: bool = False) -> list[Trial]:
    """The trials whose loss ran away: in each rung shorter than the stage (where the guard holds, :func:`survivors`),
    those past its :func:`runaway_loss` (under the rung's :func:`rung_ranking`)."""
    out = []
    for rung in sorted({t.rung for t in trials}):
        this = [t for t in trials if t.rung == rung]
        if this[0].iterations < stage_iterations:
            limit = runaway_loss(this, rung_ranking(score, True, sliced))
            out += [t for t in this if t.valid_loss > limit]
    return out


def survivors(
    trials: Sequence[Trial], keep: int, score: str, tie: float = 0.0, compressed: bool = False
) -> list[float]:
    """The lrs of the best ``keep`` trials of one rung, best first.

    With ``tie`` > 0 (a metric's standard errors, for trials shorter than the stage), trials whose metric lies
    within ``tie`` of the best count as level, and among them the higher lr goes first: a schedule compressed to a
    few iterations is harder on high lrs than the stage's whole schedule is (short-horizon bias). For the same
    reason a ``compressed`` rung that keeps two or more always keeps the next higher lr above its best (unless it
    diverged): a longer trial, not a short one, judges it. In a ``compressed`` rung a trial whose loss ran away
    (:data:`LOSS_RUNAWAY`) ranks after the sound ones, is never level and is not that upper neighbour: the next
    sound lr above the best is.
    """
    runaway = runaway_loss(trials, score) if compressed else math.inf
    ranked = sorted(trials, key=lambda t: ranking_key(t, score, runaway))
    best = ranked[0]
    sound = ranking_key(best, score, runaway)[0] == OK
    if tie > 0 and sound and score != "valid_loss":
        level = [t for t in ranked if ranking_key(t, score, runaway)[0] == OK and abs(t.metric - best.metric) <= tie]
        ranked = sorted(level, key=lambda t: -t.lr) + [t for t in ranked if t not in level]
    kept = [t.lr for t in ranked[:keep]]
    if compressed and keep >= 2 and sound:
        sound_above = (t for t in trials if t.lr > kept[0] and not t.diverged and t.valid_loss <= runaway)
        above = sorted(sound_above, key=lambda t: t.lr)
        if above and above[0].lr not in kept:
            kept[-1] = above[0].lr
    return kept


def pick_winner(
    last_rung: Sequence[Trial], score: str, tie: float = 0.0, every: Sequence[Trial] = (), compressed: bool = False
) -> tuple[float, tuple[str, ...]]:
    """The best trial's lr of the last rung (see :func:`survivors` for ``tie`` and ``compressed``). When all of it
    diverged, its lowest lr; when ``every`` trial of the race diverged, the lowest lr tried; either with a warning."""
    if all(ranking_key(t, score)[0] == DIVERGED for t in every or last_rung):
        low = min(t.lr for t in every or last_rung)
        return low, (f"every candidate's trial diverged or scored no {score}: fell back to the lowest, {low:.2e}",)
    if all(ranking_key(t, score)[0] == DIVERGED for t in last_rung):
        low = min(t.lr for t in last_rung)
        return low, (f"every trial of the last rung diverged or scored no {score}: kept its lowest, {low:.2e}",)
    return survivors(last_rung, 1, score, tie, compressed)[0], ()


def rung_ranking(score: str, compressed: bool, sliced: bool) -> str:
    """What a rung ranks its trials by: the race's ``score``, except in a ``compressed`` rung (shorter than the
    stage) of a race before unfreeze (not ``sliced``), which ranks by :data:`SHORT_FROZEN_RANKING`."""
    return SHORT_FROZEN_RANKING if compressed and not sliced else score


def next_rung(
    rung: Sequence[Trial], keep: int, score: str, n_valid: int, stage_iterations: int, sliced: bool = False
) -> list[float]:
    """The lrs of one rung's ``rung`` trials that go on to the next, longer rung: :func:`survivors`, ranked by
    :func:`rung_ranking` and, where that is a metric in a rung shorter than the stage, leaning by
    :data:`TIE_STANDARD_ERRORS`."""
    compressed = rung[0].iterations < stage_iterations
    rank = rung_ranking(score, compressed, sliced)
    return survivors(rung, keep, rank, level_width(rung, compressed, rank, n_valid), compressed)


def race_winner(
    trials: Sequence[Trial], score: str, n_valid: int, stage_iterations: int, sliced: bool = False
) -> tuple[float, tuple[str, ...]]:
    """The race's winner from all its ``trials``: :func:`pick_winner` on its last rung, ranked by
    :func:`rung_ranking`; when that rung is shorter than the stage and ranks by a metric (a ``sliced`` race, after
    ``unfreeze`` / ``freeze_to``), the highest lr within :data:`SLICE_PICK_STANDARD_ERRORS` of its best wins. The
    benchmark picks again from recorded trials with it."""
    last = [t for t in trials if t.rung == max(t.rung for t in trials)]
    compressed = last[0].iterations < stage_iterations
    rank = rung_ranking(score, compressed, sliced)  # a loss (before unfreeze) or a whole-length rung: no lean
    tie = level_width(last, compressed, rank, n_valid, SLICE_PICK_STANDARD_ERRORS)
    return pick_winner(last, rank, tie, trials, compressed)


def level_width(
    trials: Sequence[Trial], compressed: bool, score: str, n_valid: int, standard_errors: float = TIE_STANDARD_ERRORS
) -> float:
    """How close a compressed rung's metrics must be to count as level (``tie`` in :func:`survivors`):
    ``standard_errors`` standard errors of the best; 0 for trials as long as the stage (no short-horizon bias to lean
    against) or for a loss."""
    metrics = [m for m in (t.scored(score) for t in trials) if m is not None]
    if not compressed or score == "valid_loss" or not metrics:
        return 0.0
    return standard_errors * standard_error(max(metrics), n_valid)


def standard_error(metric: float, n_valid: int) -> float:
    """The standard error of a proportion (accuracy, say) measured on ``n_valid`` items; 0 outside [0, 1]."""
    if not 0 <= metric <= 1 or n_valid < 1:
        return 0.0
    return math.sqrt(max(metric * (1 - metric), 1e-4) / n_valid)
