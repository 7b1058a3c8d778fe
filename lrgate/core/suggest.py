"""Read an LR range test (lrs, losses) into a learning rate or a discriminative slice.

Pure: numpy, scipy and pandas only; no training, no Prefect, no files. The rules are those of the fastai
forum post "Selecting Learn Rates in FASTAI" (2019), rebuilt for fastai 2.8:

1. ``loss`` is the recorded (smoothed) loss, ``loss_grad`` its gradient against log10(lr), so unevenly
   spaced records give the same answer (units: loss per decade of lr).
2. The local minima and maxima of both curves come from ``scipy.signal.argrelextrema`` with
   ``np.less_equal`` / ``np.greater_equal`` and ``order=noise``; only these inflection points count.
3. Candidates are read right to left. Any point within ``margin`` decades of the sharp upturn on the
   right is ignored, and so is the global loss minimum at the bottom of the bowl when the model is frozen.
4. Frozen: the rightmost valid gradient minimum. Unfrozen or ``freeze_to``: ``slice(lo, hi)`` from the
   two rightmost valid gradient minima. The lr of the rightmost local loss minimum / 10 is reported beside.

That is the method ``inflection``. lrgate's default, ``bowl``, is what the efficacy benchmark (README,
"Efficacy") found best on its tuning split: frozen, the lr at the bottom of the smoothed loss's bowl divided by
``BOWL_DIVISOR``; after ``unfreeze`` / ``freeze_to``, the post's slice. The peers (fastai's and Lightning's
rules) are selectable by name too.

When a rule has nothing to read, a documented fallback is used and a plain-language warning says so;
a curve that cannot be read at all raises :class:`~lrgate.core.errors.CurveError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy.signal import argrelextrema

from lrgate.core.errors import CurveError, ShortCurveError

if TYPE_CHECKING:
    from lrgate.core.race_plan import Race

State = Literal["frozen", "freeze_to", "unfrozen"]
STATES: tuple[State, ...] = ("frozen", "freeze_to", "unfrozen")

DEFAULT_NOISE = 3
DEFAULT_MARGIN = 1.0
INFLECTION = "inflection"  # the forum post's method, exactly as stated
BOWL = "bowl"
DEFAULT_METHOD = BOWL
# bowl, frozen: the bottom of the smoothed loss's bowl / this. The smoothed loss lags the raw one (a moving
# average, beta 0.98), so its bottom sits near the edge of what trains; the efficacy benchmark's tuning split
# chose 1.5 among 1, 1.5, 2, 3 and 5 (mean regret 6.9, 6.7, 7.1, 7.7, 9.3 points; fastai's minimum, /10: 13.0).
BOWL_DIVISOR = 1.5
# ... and it reads the curve with this margin (decades below the upturn), so the cap never binds before it.
BOWL_MARGIN = math.log10(BOWL_DIVISOR)
# A bottom in this first share of the test is suspect (a warning, for a person or the guard; the lr stays).
BOWL_EARLY_SHARE = 0.25

# A slice's lower end when the curve yields only its upper end (fastai's own slice(hi) convention).
SLICE_RATIO = 10.0
# The loss "turns up" when, after its minimum, it climbs by at least this share of its fall into the bowl
# (and by FLAT_SHARE of its level) ...
UPTURN_MIN_RISE = 0.10
# ... and the upturn starts at the last point within this share of that climb above the minimum.
UPTURN_LEVEL = 0.10
# A curve whose loss moves by less than this share of its level before the upturn is "flat".
FLAT_SHARE = 0.02
# Below this share it holds no information at all.
DEAD_FLAT_SHARE = 1e-6
N_CHOICES = 3
# A choice where the loss falls at less than this share of its steepest valid descent gets a warning.
SHALLOW_SHARE = 0.25

FRAME_COLUMNS = ("loss", "loss_grad", "lrs", "min_loss", "max_loss", "min_grad", "max_grad")


@dataclass(frozen=True)
class CurveReading:
    """What every rule reads from a curve: the extrema frame, the upturn and the valid candidates.

    Candidate lists hold row positions into ``frame``, right to left.
    """

    frame: pd.DataFrame
    state: State
    noise: int
    margin: float
    bottom: int
    upturn: int
    turned_up: bool
    cutoff_lr: float
    gradient_candidates: tuple[int, ...]
    loss_candidates: tuple[int, ...]
    min_loss_lr_div10: float
    warnings: tuple[str, ...]

    @property
    def lrs(self) -> np.ndarray:
        return self.frame["lrs"].to_numpy()


@dataclass(frozen=True)
class Suggestion:
    """The answer for one range test.

    ``lr`` is the learning rate to train with when ``slice`` is None, else the slice's upper end.
    ``gradient_choices`` and ``loss_choices`` are the best valid inflection points of each curve,
    right to left (at most three each). ``warnings`` says in plain words which rule had to fall back.
    After a race (:mod:`lrgate.training.race`), ``lr`` and ``slice`` are the race's winner and ``race`` holds its
    record, with ``method``'s own pick among its ``rule_picks``.
    """

    state: State
    method: str
    noise: int
    margin: float
    lr: float
    slice: tuple[float, float] | None
    gradient_choices: tuple[float, ...]
    loss_choices: tuple[float, ...]
    min_loss_lr_div10: float
    tested_range: tuple[float, float]
    upturn_lr: float
    turned_up: bool
    warnings: tuple[str, ...]
    frame: pd.DataFrame = field(repr=False, compare=False)
    race: Race | None = field(default=None, repr=False, compare=False)

    @property
    def cutoff_lr(self) -> float:
        """The largest lr a rule may choose: ``margin`` decades below the upturn (``bowl`` after unfreeze goes on
        at the first lr tested, with a warning, when this lies below it)."""
        return self.upturn_lr / 10**self.margin

    @property
    def value(self) -> float | slice:
        """What fastai's ``fit_one_cycle`` takes: the lr, or a ``slice(lo, hi)``."""
        return self.lr if self.slice is None else slice(*self.slice)

    def to_dict(self) -> dict:
        """The JSON contract of ``lrgate suggest --json``; after a race, its record under ``race``."""
        out = {
            "state": self.state,
            "method": self.method,
            "params": {"noise": self.noise, "margin": self.margin},
            "lr": self.lr,
            "slice": None if self.slice is None else list(self.slice),
            "candidates": {"gradient": list(self.gradient_choices), "loss": list(self.loss_choices)},
            "min_loss_lr_div10": self.min_loss_lr_div10,
            "tested_range": list(self.tested_range),
            "warnings": list(self.warnings),
        }
        if self.race is not None:
            out["race"] = self.race.to_dict()
        return out

    def describe(self) -> str:
        """The suggestion in a few words, e.g. ``lr = 1.2e-03`` or ``slice(1.0e-05, 1.0e-03)``."""
        if self.slice is None:
            return f"lr = {self.lr:.1e}"
        return f"slice({self.slice[0]:.1e}, {self.slice[1]:.1e})"


# --------------------------------------------------------------------------------------------------
# Reading the curve


def check_params(noise: object, margin: object) -> tuple[int, float]:
    """Validate the analysis parameters; return them as ``(int, float)``."""
    if isinstance(noise, bool) or not isinstance(noise, numbers.Integral) or noise < 1:
        raise CurveError(f"noise must be a positive integer (3 filters typical spikes), got {noise!r}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise CurveError(f"margin must be a finite number of decades >= 0 (default 1), got {margin!r}")
    return int(noise), float(margin)


def clean_curve(lrs: Sequence[float], losses: Sequence[float], noise: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check a raw curve and cut it at the first non-finite loss.

    Returns
    -------
    lrs, losses : ndarray
        The part of the curve that can be analysed.
    warnings : list of str
        Set when the curve had to be cut.

    Raises
    ------
    CurveError
        Shapes differ, lrs are not finite, positive and strictly increasing, or fewer points remain than
        ``2 * noise + 1`` (the extrema filter looks ``noise`` points to each side).
    """
    lrs = np.asarray(lrs, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if lrs.ndim != 1 or losses.ndim != 1 or len(lrs) != len(losses):
        raise CurveError(f"lrs and losses must be 1-D and of one length, got shapes {lrs.shape} and {losses.shape}")
    if len(lrs) == 0:
        raise CurveError("the curve is empty: no (lr, loss) points")
    bad = np.flatnonzero(~np.isfinite(lrs) | (lrs <= 0))
    if len(bad):
        raise CurveError(f"lrs must be finite and positive, but lrs[{bad[0]}] = {lrs[bad[0]]:g}")
    steps = np.flatnonzero(np.diff(lrs) <= 0)
    if len(steps):
        i = steps[0]
        raise CurveError(
            f"lrs must increase strictly, but lrs[{i + 1}] = {lrs[i + 1]:.3g} follows lrs[{i}] = {lrs[i]:.3g}"
        )
    warnings = []
    nonfinite = np.flatnonzero(~np.isfinite(losses))
    if len(nonfinite):
        cut = nonfinite[0]
        warnings.append(
            f"the loss is not finite from lr = {lrs[cut]:.2e} on (point {cut} of {len(losses)}): "
            f"analysed the {cut} points before it"
        )
        lrs, losses = lrs[:cut], losses[:cut]
    need = 2 * noise + 1
    if len(losses) < need:
        raise ShortCurveError(
            f"noise={noise} needs at least {need} finite points, the curve has {len(losses)}: "
            "lower noise or record more iterations (lr_find num_it)"
        )
    return lrs, losses, warnings


def extrema(values: np.ndarray, noise: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the local minima and maxima of ``values`` (``argrelextrema``, ``order=noise``)."""
    minima = argrelextrema(values, np.less_equal, order=noise)[0]
    maxima = argrelextrema(values, np.greater_equal, order=noise)[0]
    return minima, maxima


def curve_frame(lrs: np.ndarray, losses: np.ndarray, noise: int) -> pd.DataFrame:
    """The post's DataFrame: loss, loss_grad, lrs, and the extrema of both (NaN where there is none)."""
    loss_grad = np.gradient(losses, np.log10(lrs))
    frame = pd.DataFrame({"loss": losses, "loss_grad": loss_grad, "lrs": lrs})
    for name, values in (("loss", losses), ("grad", loss_grad)):
        minima, maxima = extrema(values, noise)
        for kind, idx in (("min", minima), ("max", maxima)):
            column = np.full(len(values), np.nan)
            column[idx] = values[idx]
            frame[f"{kind}_{name}"] = column
    return frame[list(FRAME_COLUMNS)]


def warmup_points(n: int) -> int:
    """Points at the start that the smoothed loss spends warming up (fastai's suggestions skip them too).

    fastai's loss is a bias-corrected moving average: its first values rest on a handful of batches, so
    an easy first batch can make the very first point the curve's lowest.
    """
    return n // 10


def find_upturn(losses: np.ndarray) -> tuple[int, int, bool]:
    """Where the loss bottoms out and where it turns up for good: ``(bottom, upturn, turned_up)``.

    ``bottom`` is the global minimum after the warm-up. The loss has turned up when, after ``bottom``, it
    climbs by at least ``UPTURN_MIN_RISE`` of how far it fell into the bowl and by at least ``FLAT_SHARE``
    of its level. The upturn is then the last point still within ``UPTURN_LEVEL`` of that climb above the
    minimum (the right edge of the bowl's floor, so a flat floor with noise on it reads as one floor). A
    divergence to huge values counts as a climb of at most 3x the loss level (fastai stops at 4x).
    A curve that never climbs, or falls back at its end, has no upturn: ``upturn`` is its last point.
    """
    last = len(losses) - 1
    head = warmup_points(len(losses))
    bottom = head + int(np.argmin(losses[head:]))
    low = losses[bottom]
    level = abs(float(low))
    fall = float(losses[head : bottom + 1].max() - low)
    rise = float(losses[bottom:].max() - low)
    if rise <= 0 or rise < UPTURN_MIN_RISE * fall or rise < FLAT_SHARE * level:
        return bottom, last, False
    climb = min(rise, max(fall, 3 * level))
    floor = np.flatnonzero(losses[bottom:] <= low + UPTURN_LEVEL * climb)
    upturn = bottom + int(floor[-1])
    return bottom, upturn, upturn < last


def _collapse_runs(idx: np.ndarray) -> list[int]:
    """One position per run of adjacent extrema (a plateau is one inflection point: keep its middle)."""
    runs: list[list[int]] = []
    for i in idx.tolist():
        if runs and i - runs[-1][-1] == 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [run[len(run) // 2] for run in runs]


def read_curve(
    lrs: Sequence[float],
    losses: Sequence[float],
    state: State = "frozen",
    *,
    noise: int = DEFAULT_NOISE,
    margin: float = DEFAULT_MARGIN,
) -> CurveReading:
    """Validate a curve and read its inflection points under the post's rules.

    Parameters
    ----------
    lrs, losses : sequence of float
        The range test, as fastai's Recorder holds it (``learn.recorder.lrs`` / ``.losses``).
    state : {"frozen", "freeze_to", "unfrozen"}
        Which parameter groups train (see :func:`lrgate.training.learner_state.detect_state`).
    noise : int
        ``order`` of ``argrelextrema``: an extremum must beat ``noise`` points on each side.
    margin : float
        Points within this many decades of the upturn are not candidates.

    Raises
    ------
    CurveError
        The curve or the parameters cannot be read (see :func:`clean_curve`), or the loss does not move.
    """
    if state not in STATES:
        raise CurveError(f"state must be one of {', '.join(STATES)}; got {state!r}")
    noise, margin = check_params(noise, margin)
    lrs, losses, warnings = clean_curve(lrs, losses, noise)
    frame = curve_frame(lrs, losses, noise)
    level = max(float(np.median(np.abs(losses))), np.finfo(float).tiny)
    if np.ptp(losses) <= DEAD_FLAT_SHARE * level:
        raise CurveError(
            f"the loss does not change over the tested range {lrs[0]:.1e} .. {lrs[-1]:.1e}: nothing to read; "
            "widen the range (lr_find end_lr) or check that the model trains"
        )

    bottom, upturn, turned_up = find_upturn(losses)
    if not turned_up:
        warnings.append(
            f"the loss never turns up: the test ended at lr = {lrs[-1]:.2e} before divergence, so candidates "
            f"are capped {margin:g} decade(s) below its end; widen the range (lr_find end_lr) to see the upturn"
        )
    cutoff_lr = float(lrs[upturn]) / 10**margin
    # Flat where candidates are read (after the warm-up, below the cutoff): its extrema are noise.
    readable = losses[warmup_points(len(losses)) : int(np.searchsorted(lrs, cutoff_lr, side="right"))]
    if len(readable) > 1 and np.ptp(readable) < FLAT_SHARE * level:
        warnings.append(
            f"the loss is nearly flat below the cutoff (it moves {np.ptp(readable) / level:.1%} of its level): "
            "its inflection points are noise-sized, so read the plot before trusting them"
        )

    last = len(losses) - 1

    def valid(idx: np.ndarray, skip: int | None = None) -> tuple[int, ...]:
        # A minimum on the test's edge is not an inflection point: the curve may go on beyond it.
        keep = [i for i in _collapse_runs(idx) if 0 < i < last and lrs[i] <= cutoff_lr and i != skip]
        return tuple(reversed(keep))

    loss_min, _ = extrema(losses, noise)
    grad_min, _ = extrema(frame["loss_grad"].to_numpy(), noise)
    return CurveReading(
        frame=frame,
        state=state,
        noise=noise,
        margin=margin,
        bottom=bottom,
        upturn=upturn,
        turned_up=turned_up,
        cutoff_lr=cutoff_lr,
        gradient_candidates=valid(grad_min),
        loss_candidates=valid(loss_min, skip=bottom if state == "frozen" else None),
        # As the post computes it: the rightmost local loss minimum of the whole curve, / 10.
        min_loss_lr_div10=float(lrs[loss_min[-1]]) / 10,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------------------
# Rules: a reading in, (lr, slice or None, warnings) out


Rule = Callable[[CurveReading, bool], tuple[float, "tuple[float, float] | None", list[str]]]


def _fallback_lr(reading: CurveReading) -> tuple[float, str]:
    """An lr when no gradient minimum is valid, with the warning that says which fallback was used."""
    lrs = reading.lrs
    if reading.loss_candidates:
        lr = float(lrs[reading.loss_candidates[0]])
        return lr, f"no valid gradient minimum: used the rightmost valid loss minimum, {lr:.2e}"
    if lrs[0] <= reading.min_loss_lr_div10 <= reading.cutoff_lr:
        lr = reading.min_loss_lr_div10
        return lr, f"no valid minimum on either curve: used min-loss lr / 10, {lr:.2e}"
    if reading.cutoff_lr >= lrs[0]:
        lr = reading.cutoff_lr
        return lr, f"no valid minimum on either curve: used the upturn / 10^margin, {lr:.2e}"
    raise _no_room(reading)


def _no_room(reading: CurveReading) -> CurveError:
    """The error for a curve whose cutoff lies below the first lr tested: no lr is allowed at all."""
    lrs = reading.lrs
    return CurveError(
        f"the loss turns up at lr = {lrs[reading.upturn]:.2e}, within {reading.margin:g} decade(s) of the "
        f"start of the test ({lrs[0]:.2e}): nothing below it to choose; start the range test lower (start_lr)"
    )


def takes_slice(state: str, n_groups: int | None = None) -> bool:
    """Whether the stage after a range test in ``state`` trains with a slice: after unfreeze or freeze_to, unless
    the model has a single parameter group (then one lr)."""
    return state != "frozen" and n_groups != 1


def inflection_rule(reading: CurveReading, takes_slice: bool) -> tuple[float, tuple[float, float] | None, list[str]]:
    """The post's rule (the rightmost valid gradient minimum, or a slice from the two rightmost), with a warning
    when the choice is a noise-sized wiggle (:func:`shallow_choice`)."""
    lr, slice_, warnings = _rightmost_gradient_minima(reading, takes_slice)
    shallow = shallow_choice(reading, lr)
    return lr, slice_, warnings + ([shallow] if shallow else [])


def _rightmost_gradient_minima(
    reading: CurveReading, takes_slice: bool
) -> tuple[float, tuple[float, float] | None, list[str]]:
    lrs, grads, warnings = reading.lrs, reading.gradient_candidates, []
    if not takes_slice:
        if grads:
            return float(lrs[grads[0]]), None, warnings
        lr, why = _fallback_lr(reading)
        return lr, None, [why]
    if len(grads) >= 2:
        return float(lrs[grads[0]]), (float(lrs[grads[1]]), float(lrs[grads[0]])), warnings
    if grads:
        hi = float(lrs[grads[0]])
        warnings.append(f"only one valid gradient minimum: the slice's lower end is hi / {SLICE_RATIO:g}")
    else:
        hi, why = _fallback_lr(reading)
        warnings += [why, f"the slice's lower end is hi / {SLICE_RATIO:g}"]
    return hi, (max(hi / SLICE_RATIO, float(lrs[0])), hi), warnings


def _peer_rule(name: str) -> Rule:
    """A peer's one-lr rule (see :mod:`lrgate.core.peers`) under lrgate's contract: capped at the cutoff, with a warning
    when capped, and ``slice(lr / 10, lr)`` where a slice is wanted."""
    from lrgate.core import peers

    def rule(reading: CurveReading, takes_slice: bool) -> tuple[float, tuple[float, float] | None, list[str]]:
        lrs, losses = reading.lrs, reading.frame["loss"].to_numpy()
        if name in peers.FASTAI:
            window = peers.fastai_window(lrs, losses)
            if len(window[0]) < 2:
                raise CurveError(f"{name} needs more points than fastai's window [n//10:-5] leaves of {len(lrs)}")
            try:
                lr = peers.FASTAI[name](*window)
            except ValueError as e:
                raise CurveError(str(e)) from None
        else:
            if len(lrs) < 13:
                raise CurveError(f"{name} needs at least 13 points (it skips 10 at the start and 1 at the end)")
            lr = peers.lightning(lrs, losses)
        warnings = []
        if reading.cutoff_lr < lrs[0]:
            raise _no_room(reading)
        if not lrs[0] <= lr <= reading.cutoff_lr:
            capped = min(max(lr, float(lrs[0])), reading.cutoff_lr)
            warnings.append(
                f"{name} picked {lr:.2e}, outside the tested range below the cutoff: capped at {capped:.2e}"
            )
            lr = capped
        if not takes_slice:
            return lr, None, warnings
        return lr, (max(lr / SLICE_RATIO, float(lrs[0])), lr), warnings

    rule.__doc__ = f"{name}, capped at the cutoff; slice(lr/10, lr) when a slice is wanted"
    return rule


def bowl_rule(reading: CurveReading, takes_slice: bool) -> tuple[float, tuple[float, float] | None, list[str]]:
    """lrgate's default. Frozen: the bottom of the smoothed loss's bowl / ``BOWL_DIVISOR``. After ``unfreeze``
    or ``freeze_to`` the curve is often flat or rises from its start (the bowl has no bottom to read), and the
    post's slice did best there."""
    lrs = reading.lrs
    if reading.state != "frozen":
        if reading.cutoff_lr >= lrs[0]:
            return inflection_rule(reading, takes_slice)
        # The loss rises from the start (a model the frozen stage already fitted well): change it as little as
        # the test allows and say so, rather than fail the run (the guard escalates a warning to a person).
        lo = float(lrs[0])
        return (
            lo,
            (lo, lo) if takes_slice else None,
            [
                f"the loss turns up at {lrs[reading.upturn]:.2e}, within {reading.margin:g} decade(s) of the start "
                f"of the test: nothing to read below it; used the smallest lr tested, {lo:.2e} (a fine-tune that "
                "changes little); check the plot, or start the range test lower (start_lr)"
            ],
        )
    if reading.cutoff_lr < lrs[0]:
        raise _no_room(reading)
    lr = min(max(float(lrs[reading.bottom]) / BOWL_DIVISOR, float(lrs[0])), reading.cutoff_lr)
    warnings = []
    if reading.bottom < len(lrs) * BOWL_EARLY_SHARE:
        warnings.append(
            f"the loss is lowest at {lrs[reading.bottom]:.2e}, in the first {BOWL_EARLY_SHARE:.0%} of the test: "
            "there the smoothed loss still rests on its first few batches, so this curve has no bowl to read; "
            "check the plot"
        )
    if lr < float(lrs[reading.bottom]) / BOWL_DIVISOR:
        warnings.append(f"the bowl's bottom / {BOWL_DIVISOR:g} lies above the cutoff: capped at {lr:.2e}")
    return lr, None, warnings


def default_margin(method: str, state: State) -> float:
    """The margin a method reads with when none is given: 1 decade (the post), the bowl's own when frozen."""
    return BOWL_MARGIN if method == BOWL and state == "frozen" else DEFAULT_MARGIN


METHODS: dict[str, Rule] = {
    BOWL: bowl_rule,
    INFLECTION: inflection_rule,
    **{name: _peer_rule(name) for name in ("valley", "slide", "minimum", "steep", "lightning")},
}


def shallow_choice(reading: CurveReading, lr: float) -> str | None:
    """A warning when the loss falls at ``lr`` at less than ``SHALLOW_SHARE`` of its steepest valid descent.

    The post's rule trusts any gradient minimum; on a curve whose gradient falls smoothly into the upturn
    zone, the rightmost valid one can be a noise-sized wiggle on the flat part, far left of where the
    loss actually drops. Say so, so that a person (or a gate's guard) looks at the plot.
    """
    lrs, grad = reading.lrs, reading.frame["loss_grad"].to_numpy()
    readable = slice(warmup_points(len(lrs)), int(np.searchsorted(lrs, reading.cutoff_lr, side="right")))
    if readable.stop - readable.start < 2:
        return None
    steepest = readable.start + int(np.argmin(grad[readable]))
    at = int(np.argmin(np.abs(np.log10(lrs) - np.log10(lr))))
    if grad[steepest] >= 0 or grad[at] <= SHALLOW_SHARE * grad[steepest]:
        return None
    return (
        f"the loss falls at {lr:.2e} at {max(grad[at] / grad[steepest], 0):.0%} of its steepest valid descent "
        f"(at {lrs[steepest]:.2e}): the chosen inflection may be noise on a flat stretch; check the plot"
    )


def suggest(
    lrs: Sequence[float],
    losses: Sequence[float],
    state: State = "frozen",
    *,
    method: str = DEFAULT_METHOD,
    noise: int = DEFAULT_NOISE,
    margin: float | None = None,
    n_groups: int | None = None,
) -> Suggestion:
    """Suggest a learning rate (frozen) or a slice (``freeze_to`` / unfrozen) from a range test.

    Parameters
    ----------
    lrs, losses : sequence of float
        The range test: lrs strictly increasing and positive; losses may end in NaN/inf (cut there).
    state : {"frozen", "freeze_to", "unfrozen"}
        Which parameter groups train.
    method : str
        A name in :data:`METHODS`: ``"bowl"`` (the default), ``"inflection"`` (the forum post's method as
        stated), or a peer's rule.
    noise, margin : int, float
        See :func:`read_curve`; ``margin=None`` is the method's own (:func:`default_margin`).
    n_groups : int, optional
        Number of parameter groups; a single-group model gets one lr even when unfrozen.

    Returns
    -------
    Suggestion
        ``lr`` always lies inside the tested range and at least ``margin`` decades below the upturn (except
        ``bowl`` after unfreeze when the upturn leaves no room: the first lr tested, with a warning);
        a slice always has ``lo <= hi``.

    Raises
    ------
    CurveError
        Unknown method, bad parameters, or a curve that cannot be read.

    Examples
    --------
    >>> lrs = np.logspace(-7, 0, 100)
    >>> x = np.log10(lrs)
    >>> losses = 1 + np.tanh(-(x + 3)) + np.exp(3 * (x + 0.5))
    >>> s = suggest(lrs, losses, "frozen")
    >>> 1e-4 < s.lr < 1e-2
    True
    """
    if method not in METHODS:
        raise CurveError(f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}")
    if margin is None:
        margin = default_margin(method, state)
    reading = read_curve(lrs, losses, state, noise=noise, margin=margin)
    lr, slice_, rule_warnings = METHODS[method](reading, takes_slice(state, n_groups))
    tested = (float(reading.lrs[0]), float(reading.lrs[-1]))
    if slice_ is not None:
        assert tested[0] <= slice_[0] <= slice_[1] == lr, "a rule broke the slice contract"
    # The cutoff binds unless it lies below the test's start (only bowl then goes on, at the first lr, warning).
    assert tested[0] <= lr <= max(reading.cutoff_lr, tested[0]), "a rule chose an lr outside the valid range"
    return Suggestion(
        state=state,
        method=method,
        noise=reading.noise,
        margin=reading.margin,
        lr=lr,
        slice=slice_,
        gradient_choices=tuple(float(reading.lrs[i]) for i in reading.gradient_candidates[:N_CHOICES]),
        loss_choices=tuple(float(reading.lrs[i]) for i in reading.loss_candidates[:N_CHOICES]),
        min_loss_lr_div10=reading.min_loss_lr_div10,
        tested_range=tested,
        upturn_lr=float(reading.lrs[reading.upturn]),
        turned_up=reading.turned_up,
        warnings=reading.warnings + tuple(rule_warnings),
        frame=reading.frame,
    )


def format_choices(s: Suggestion, *, race: bool = True) -> str:
    """The choices table the post prints: the suggestion, the three best points of each curve, the race (unless
    ``race=False``: a page that shows it as a table of its own), warnings."""

    def row(name: str, values: Sequence[float]) -> str:
        cells = [f"{v:9.2e}" for v in values] + ["        -"] * (N_CHOICES - len(values))
        return f"  {name:<10}" + " ".join(cells)

    lines = [
        f"state: {s.state}   method: {s.method}   noise: {s.noise}   margin: {s.margin:g} decade(s)",
        f"tested lr: {s.tested_range[0]:.2e} .. {s.tested_range[1]:.2e}   "
        + (f"upturn at {s.upturn_lr:.2e}" if s.turned_up else "no upturn"),
        "best choices, right to left:",
        f"  {'':<10}" + " ".join(f"{h:>9}" for h in ("1st", "2nd", "3rd")),
        row("gradient", s.gradient_choices),
        row("loss", s.loss_choices),
        f"min-loss lr / 10: {s.min_loss_lr_div10:.2e}",
        f"suggestion: {s.describe()}",
    ]
    if race and s.race is not None:
        lines += ["", *format_race(s.race)]
    lines += [f"warning: {w}" for w in s.warnings]
    return "\n".join(lines)


def format_race(race: Race) -> list[str]:
    """The race as text lines: each trial's lr, length and scores by rung, the curve rules' picks, the cost."""
    lines = [f"race (scored by {race.score}; winner {race.winner:.2e}):"]
    won = race.winning_trial
    for t in race.trials:
        loss = "diverged" if t.diverged else f"valid_loss {t.valid_loss:.4g}"
        metric = "" if t.metric is None else f"  {race.score} {t.metric:.4g}"
        mark = "  <- winner" if t is won else ""
        lines.append(f"  rung {t.rung}  lr {t.lr:.2e}  {t.iterations:>6} it  {loss}{metric}{mark}")
    lines.append("  curve rules: " + ", ".join(f"{name} {lr:.2e}" for name, lr in race.rule_picks.items()))
    if race.head_lr is not None:
        lines.append(f"  candidates around the frozen stage's lr, {race.head_lr:.2e}")
    lines.append(
        f"  cost: {race.iterations} iterations, {race.seconds:.1f} s, {race.cost_in_trainings:.2f} trainings "
        f"of the stage ({race.stage_iterations} it each)"
    )
    return lines
