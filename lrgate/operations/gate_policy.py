"""What a gate decides, as plain functions of its record, its config, the guard's history and a person's answer.

    decide(record, gate, guard, last)   -> a Decision to go on with, or Review (ask a person), or raises
    on_timeout(record, gate)            -> the Decision when nobody answered in time, or raises GateTimeout
    answered(record, gate, answer)      -> the Decision an answer makes, or what is wrong with it (str)

No Prefect here: :mod:`lrgate.flows.gates` builds the form, pauses or suspends, publishes and writes; these
functions say what each outcome means, and are tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lrgate.core.config import GateConfig, GuardConfig
from lrgate.core.errors import CurveError, LrgateError
from lrgate.core.gate_records import Decision, GateRecord, Value, format_value
from lrgate.operations.guard import guard_problem


class GateTimeout(LrgateError):
    """A manual gate's wait ran out and its config says ``on_timeout: fail``."""


class GuardStop(LrgateError):
    """The guard stopped an unattended gate and the config says ``guard.on_fail: fail``; ``problem`` says why."""

    def __init__(self, gate: str, problem: str) -> None:
        super().__init__(f"gate {gate}: the guard stopped the suggestion: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class Review:
    """Ask a person. ``guard``: why the guard stopped an ``auto`` gate (empty for a ``manual`` gate)."""

    guard: str = ""

    @property
    def why(self) -> str:
        """The line that heads the form when the guard escalated."""
        return f"the guard stopped the suggestion: {self.guard}" if self.guard else ""


class Answer(Protocol):
    """A person's answer, as the gate's form holds it (the ``lr`` or ``slice_lo``/``slice_hi`` field by gate)."""

    reviewer: str
    decision: str
    reason: str


def make_decision(
    record: GateRecord,
    gate: GateConfig,
    action: str,
    reviewer: str,
    value: Value | None,
    reason: str = "",
    source: str | None = None,
) -> Decision:
    """A decision now; ``source`` says where the value came from (default: from the action)."""
    return Decision(
        gate=record.gate,
        policy=gate.policy,
        action=action,
        reviewer=reviewer,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=reason,
        source=source or {"approve": "suggestion", "override": "override"}.get(action, action),
        value=value,
        suggested=record.suggestion,
    )


def pinned(gate: GateConfig) -> Value | None:
    """The gate's pinned lr or slice, if its config pins one."""
    return gate.lr if gate.lr is not None else None if gate.slice is None else list(gate.slice)


def decide(record: GateRecord, gate: GateConfig, guard: GuardConfig | None, last: Value | None) -> Decision | Review:
    """The gate's decision when it needs nobody, else :class:`Review`.

    A pinned value goes on as configured. An ``auto`` gate goes on with the suggestion unless the guard stops it
    (then a person reviews it, or the run fails, as ``guard.on_fail`` says). A ``manual`` gate asks a person. A
    range test that cannot be read has no suggestion: a pin goes on, a person may override or reject it (a
    ``manual`` gate, or the guard's escalation), and an ``auto`` gate without a guard fails the run.

    Raises
    ------
    CurveError
        An ``auto`` gate without a guard whose curve cannot be read.
    GuardStop
        The guard stopped the suggestion and ``guard.on_fail`` is ``fail``.
    """
    pin = pinned(gate)
    unread = record.suggestion is None
    if unread and pin is None and gate.policy == "auto" and guard is None:
        raise CurveError(f"gate {record.gate}: {record.error}")  # nothing to go on with, and no one to ask
    if gate.policy == "auto" and pin is None and guard is not None:
        if unread:
            problem = f"the range test cannot be read: {record.error}"
        else:
            problem = guard_problem(record.suggestion, guard, last)
        if problem is not None:
            if guard.on_fail == "fail":
                raise GuardStop(record.gate, problem)
            return Review(guard=problem)
    elif gate.policy == "manual" and pin is None:
        return Review()
    if gate.lr is not None:
        return make_decision(record, gate, "approve", "auto", pin, source="pinned lr")
    if gate.slice is not None:
        return make_decision(record, gate, "approve", "auto", pin, source="pinned slice")
    return make_decision(record, gate, "approve", "auto", record.value, source="suggestion")


def escalated(decision: Decision, review: Review) -> Decision:
    """A reviewed decision as the record of a guard's escalation (unchanged for a ``manual`` gate)."""
    if not review.guard:
        return decision
    return decision.model_copy(update={"policy": "auto, escalated to manual by the guard", "guard": review.guard})


def on_timeout(record: GateRecord, gate: GateConfig) -> Decision:
    """The decision when nobody answered within the gate's ``timeout``: its ``on_timeout``.

    Raises
    ------
    GateTimeout
        ``on_timeout: fail``, or ``approve`` with no suggestion to approve.
    """
    if gate.on_timeout == "fail":
        raise GateTimeout(f"gate {record.gate}: no review within {gate.timeout} s (on_timeout: fail)")
    if gate.on_timeout == "approve" and record.suggestion is None:
        raise GateTimeout(
            f"gate {record.gate}: no review within {gate.timeout} s, and no suggestion to approve "
            f"(on_timeout: approve): {record.error}"
        )
    value = record.value if gate.on_timeout == "approve" else None
    return make_decision(record, gate, gate.on_timeout, "timeout", value, f"no answer within {gate.timeout} s")


def choices(record: GateRecord) -> dict[str, Value]:
    """The gate's pick list, label -> value (an lr, or a slice as ``[lo, hi]``): the suggestion first, then the
    race's candidates (a slice gate's as ``slice(c / ratio, c)``), low to high. Empty when nothing was suggested."""
    if record.suggestion is None:
        return {}
    suggested = record.value
    out = {f"{format_value(suggested)} (suggestion)": suggested}
    race = record.suggestion.race or {}
    ratio = race.get("slice_ratio")
    for c in sorted(race.get("candidates", [])):
        if record.takes_slice and ratio is None:
            continue  # a slice gate whose race gave no ratio: its candidates are not slices
        value = [c / ratio, c] if record.takes_slice else c
        if format_value(value) != format_value(suggested):  # the winner is the suggestion: listed once
            out.setdefault(f"{format_value(value)} (race candidate)", value)
    return out


def _typed(text: str) -> float | None:
    return float(text) if text.strip() else None


def read_answer(answer: Answer, record: GateRecord) -> tuple[Value | None, str | None]:
    """The value an answer trains with (an lr, ``[lo, hi]``, or None to reject) and what is wrong with it, if
    anything: what the form's schema cannot check (a reason to reject, a typed value inside the lrs the range test
    and the race tried, both ends of a typed slice, lo <= hi, an approval that picked or typed another value)."""
    lo, hi = record.override_range
    picked = choices(record).get(getattr(answer, "choice", None))
    typed: Any
    if record.takes_slice:
        typed = [_typed(answer.slice_lo), _typed(answer.slice_hi)]
        if typed == [None, None]:
            typed = None
        elif None in typed:
            return None, "a typed slice needs both slice_lo and slice_hi (or neither, to take the choice)"
    else:
        typed = _typed(answer.lr)
    if answer.decision == "reject":
        return None, None if answer.reason.strip() else "a rejection needs a reason"
    if answer.decision == "approve":
        if typed is not None or picked != record.value:
            shown = format_value(typed if typed is not None else picked)
            return None, f"approve trains with the suggestion: set decision to override to train with {shown}"
        return record.value, None
    value = typed if typed is not None else picked
    if value is None:
        return None, "an override needs a value: pick a choice or type one"
    for v in value if isinstance(value, list) else [value]:
        if not lo <= v <= hi:
            return None, f"{v:g} is outside the lrs the range test and the race tried, {lo:.3g} .. {hi:.3g}"
    if isinstance(value, list) and value[0] > value[1]:
        return None, f"slice_lo ({value[0]:g}) must not exceed slice_hi ({value[1]:g})"
    return value, None


def answered(record: GateRecord, gate: GateConfig, answer: Answer) -> Decision | str:
    """The decision a person's answer makes, or why the answer is refused (the gate then asks again)."""
    value, problem = read_answer(answer, record)
    if problem is not None:
        return problem
    return make_decision(record, gate, answer.decision, answer.reviewer, value, answer.reason)
