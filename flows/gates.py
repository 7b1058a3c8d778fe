"""The gates between stages: go on by themselves (``auto``) or wait for a person (``manual``).

A manual gate pauses the flow run with a Prefect ``RunInput`` form: approve, override (one of the gate's
choices from a pick list, or a typed lr or slice) or reject with a reason, and a required reviewer. The form's
description carries the suggestion, the choices table and the review plot (embedded as a PNG data URI), so the
Prefect UI shows everything on one page. The server checks what the form's schema says (a choice from the list,
a typed value that reads as a number); the rest (inside the tested lr range, lo <= hi, a reason to reject) is
checked here, and the gate waits again with the reason shown.

A deployed run suspends (its process and GPU are freed; on resume the flow re-runs and finished stages come
back cached); a local run pauses in place, having released its GPU memory first. Each decision is written to
``gate-<name>/decision.json`` (so a resumed run never asks twice), into the run report, and as an artifact.
"""

from __future__ import annotations

import gc
import itertools
import json
from datetime import UTC, datetime
from typing import Any, Literal

from lrgate.tasks.stages import artifact_key, gate_markdown
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, PrefectHTTPStatusError
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput, create_flow_run_input
from prefect.runtime import deployment, flow_run
from pydantic import Field, create_model

from lrgate.config import GateConfig, RunConfig
from lrgate.errors import CurveError, LrgateError
from lrgate.guard import guard_problem, last_value, remember
from lrgate.outputs import write_text
from lrgate.report import format_value
from lrgate.run_dir import RunInfo

POLL_SECONDS = 2
PENDING_KEY = "lrgate-gate-{gate}"  # flow-run input that `lrgate pending` reads


class GateTimeout(LrgateError):
    """A manual gate's wait ran out and its config says ``on_timeout: fail``."""


class GuardStop(LrgateError):
    """The guard stopped an unattended gate and the config says ``guard.on_fail: fail``."""


def takes_slice(record: dict[str, Any]) -> bool:
    """Whether the stage after the gate trains with a slice (else one lr)."""
    s = record["suggestion"]
    return s["slice"] is not None if s is not None else record["takes_slice"]


def tested_range(record: dict[str, Any]) -> list[float]:
    """The lrs the gate's range test tried, ``[lo, hi]``: the bounds of any override."""
    s = record["suggestion"]
    return s["tested_range"] if s is not None else record["tested_range"]


# A typed lr: digits with an optional point and exponent (3e-3, 0.003, 3E-3, 1.5e-04); empty takes the pick list.
# A string, not a number: the Prefect UI's number input drops the "e" of 3e-3 (the answer then arrives empty).
TYPED_LR = r"^\s*(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?)?\s*$"


def choices(record: dict[str, Any]) -> dict[str, Any]:
    """The gate's pick list, label -> value (an lr, or a slice as ``[lo, hi]``): the suggestion first, then the
    race's candidates (a slice gate's as ``slice(c / ratio, c)``), low to high. Empty when nothing was suggested."""
    s = record["suggestion"]
    if s is None:
        return {}
    suggested = s["slice"] or s["lr"]
    out = {f"{format_value(suggested)} (suggestion)": suggested}
    race = s.get("race") or {}
    ratio = race.get("slice_ratio")
    for c in sorted(race.get("candidates", [])):
        if takes_slice(record) and ratio is None:
            continue  # a slice gate whose race gave no ratio: its candidates are not slices
        value = [c / ratio, c] if takes_slice(record) else c
        if format_value(value) != format_value(suggested):  # the winner is the suggestion: listed once
            out.setdefault(f"{format_value(value)} (race candidate)", value)
    return out


def answer_form(record: dict[str, Any]) -> type[RunInput]:
    """The gate's form: a decision, a pick list of the gate's choices (the suggestion is the default), and a typed
    override as text (``3e-3`` or ``0.003``) that wins over the pick list when given. A typed value's bounds (the
    lrs the range test tried) are the flow's to check (:func:`read_answer`): a JSON schema bounds numbers, not
    text. A gate whose curve could not be read has no suggestion: its form offers override and reject only."""
    s = record["suggestion"]
    lo, hi = tested_range(record)
    picks = list(choices(record))
    decisions = Literal["approve", "override", "reject"] if s is not None else Literal["override", "reject"]
    fields: dict[str, Any] = {
        "reviewer": (str, Field(min_length=1, description="who decides (required)")),
        "decision": (decisions, Field("approve" if s is not None else "override", description="what to do")),
    }
    if picks:
        fields["choice"] = (
            Literal[tuple(picks)],
            Field(picks[0], description="override: train with this one of the gate's choices"),
        )
    typed = f"{lo:.1e} .. {hi:.1e}, e.g. 3e-3 or 0.003"
    either = "; when given, it wins over the choice" if picks else ""
    if not takes_slice(record):
        fields["lr"] = (str, Field("", pattern=TYPED_LR, description=f"override: or type an lr, {typed}{either}"))
    else:
        for end in ("lo", "hi"):
            fields[f"slice_{end}"] = (
                str,
                Field("", pattern=TYPED_LR, description=f"override: or type the slice's {end}, {typed}{either}"),
            )
    fields["reason"] = (str, Field("", description="why (required to reject)"))
    return create_model(f"Gate{record['gate'].title()}Answer", __base__=RunInput, **fields)


def _typed(text: str) -> float | None:
    return float(text) if text.strip() else None


def read_answer(answer: RunInput, record: dict[str, Any]) -> tuple[Any, str | None]:
    """The value an answer trains with (an lr, ``[lo, hi]``, or None to reject) and what is wrong with it, if
    anything: what the server's schema cannot check (a reason to reject, a typed value inside the tested range,
    both ends of a typed slice, lo <= hi, an approval that picked or typed another value)."""
    lo, hi = tested_range(record)
    picked = choices(record).get(getattr(answer, "choice", None))
    if takes_slice(record):
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
        if typed is not None or picked != _suggested_value(record):
            shown = format_value(typed if typed is not None else picked)
            return None, f"approve trains with the suggestion: set decision to override to train with {shown}"
        return _suggested_value(record), None
    value = typed if typed is not None else picked
    if value is None:
        return None, "an override needs a value: pick a choice or type one"
    for v in value if isinstance(value, list) else [value]:
        if not lo <= v <= hi:
            return None, f"{v:g} is outside the lrs the range test tried, {lo:.3g} .. {hi:.3g}"
    if isinstance(value, list) and value[0] > value[1]:
        return None, f"slice_lo ({value[0]:g}) must not exceed slice_hi ({value[1]:g})"
    return value, None


def _decision(
    record: dict[str, Any],
    gate: GateConfig,
    action: str,
    reviewer: str,
    value: Any,
    reason: str = "",
    source: str | None = None,
) -> dict:
    """A decision record; ``source`` says where the value came from (default: from the action)."""
    return {
        "gate": record["gate"],
        "policy": gate.policy,
        "action": action,
        "reviewer": reviewer,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason,
        "source": source or {"approve": "suggestion", "override": "override"}.get(action, action),
        "value": value,
        "suggested": record["suggestion"],
    }


def _suggested_value(record: dict[str, Any]) -> Any:
    """The suggestion's lr or slice; None when the curve could not be read."""
    s = record["suggestion"]
    return None if s is None else s["slice"] or s["lr"]


def _artifact_url(record: dict[str, Any]) -> str | None:
    """The UI page of the gate's review artifact (the form's page at full width), when the UI's address is known."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui}/artifacts/artifact/{record['artifact_id']}" if ui and record.get("artifact_id") else None


def _release_accelerator() -> None:
    """A GPU is never held across a gate: the stages' Learners are gone; give their cached memory back."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _running_again() -> None:
    """After a pause times out the server still has the run Paused; the flow goes on, so say it runs again
    (else its next pause is refused: "Cannot pause flows that are not currently running")."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Running(), force=True)


def _answered_while_suspended(form: type[RunInput], key: str) -> RunInput | None:
    """The answer to a suspended gate's form, when this is the deployed run's re-run after it was answered."""
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_base_key

    value = read_flow_run_input(keyset_from_base_key(f"suspended-{key}")["response"])  # None: not answered
    return None if value is None else form(**value)


def _wait(cfg: RunConfig, record: dict[str, Any], gate: GateConfig, wait, form: type[RunInput], key: str, attempt: int):
    """Announce the gate (log line with the UI link, event), pause or suspend until its form is answered; return the
    answer, or None when the gate's timeout ran out and its ``on_timeout`` goes on (else :class:`GateTimeout`)."""
    logger = get_run_logger()
    name = record["gate"]
    logger.info(
        "gate %s waits for review: %s (answer in the UI, or `lrgate approve %s`)", name, flow_run.ui_url, flow_run.id
    )
    emit_event(
        "lrgate.gate.waiting",
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}"},
        payload={
            "gate": name,
            "config": cfg.name,
            "suggestion": _suggested_value(record),
            "ui_url": flow_run.ui_url,
            "attempt": attempt,
        },
    )
    # reviewer stays without a default, so the UI form requires it (the CLI sends the user name)
    kwargs = {"timeout": gate.timeout, "key": key}
    if wait is pause_flow_run:
        kwargs["poll_interval"] = POLL_SECONDS
    try:
        return wait(wait_for_input=form, **kwargs)
    except FlowPauseTimeout:
        logger.warning("gate %s: no answer in %d s: %s", name, gate.timeout, gate.on_timeout)
        _running_again()
        if gate.on_timeout == "fail":
            raise GateTimeout(f"gate {name}: no review within {gate.timeout} s (on_timeout: fail)") from None
        if gate.on_timeout == "approve" and record["suggestion"] is None:
            raise GateTimeout(
                f"gate {name}: no review within {gate.timeout} s, and no suggestion to approve "
                f"(on_timeout: approve): {record['error']}"
            ) from None
        return None


def wait_for_review(
    cfg: RunConfig, run: RunInfo, record: dict[str, Any], gate: GateConfig, why: str = ""
) -> dict[str, Any]:
    """Pause (or, when deployed, suspend) until a person answers the gate's form; return the decision.

    ``why`` (the guard's reason, when it escalated an ``auto`` gate) heads the form's description.
    """
    logger = get_run_logger()
    name = record["gate"]
    form = answer_form(record)
    page = gate_markdown(record, f"Review gate {name} of run {run.run_id}", full_page=_artifact_url(record))
    try:
        create_flow_run_input(
            PENDING_KEY.format(gate=name),
            {
                "gate": name,
                "suggestion": record["suggestion"],
                "error": record.get("error"),
                "takes_slice": takes_slice(record),
                "tested_range": tested_range(record),
                "plot": record["plot"],
                "run_dir": str(run.run_dir),
            },
        )
    except PrefectHTTPStatusError as e:
        if e.response.status_code != 409:  # 409: published already, by this run before it was suspended
            raise
    _release_accelerator()
    if record["suggestion"] is None and gate.on_timeout == "approve":
        logger.warning(
            "gate %s has no suggestion to approve: unless someone answers within %d s the run fails", name, gate.timeout
        )
    wait = suspend_flow_run if deployment.id else pause_flow_run
    note = f"**Escalated to review: {why}.**\n\n" if why else ""
    for attempt in itertools.count(1):  # until an answer passes the checks the schema cannot make
        key = f"gate-{name}-{attempt}"
        answer = _answered_while_suspended(form, key) if wait is suspend_flow_run else None
        if answer is not None:  # a deployed run's re-run after the resume: say what happened, not "waits" again
            logger.info("gate %s: answered while suspended, by %s: %s", name, answer.reviewer, answer.decision)
        else:
            answer = _wait(cfg, record, gate, wait, form.with_initial_data(description=note + page), key, attempt)
            if answer is None:  # no answer within the gate's timeout
                value = _suggested_value(record) if gate.on_timeout == "approve" else None
                return _decision(record, gate, gate.on_timeout, "timeout", value, f"no answer within {gate.timeout} s")
        value, problem = read_answer(answer, record)
        if problem is None:
            break
        logger.warning("gate %s: answer refused: %s; waiting again", name, problem)
        note = f"**Your last answer was refused: {problem}.**\n\n"
    return _decision(record, gate, answer.decision, answer.reviewer, value, answer.reason)


def gate_decision(cfg: RunConfig, run: RunInfo, record: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """The gate's decision: kept from an earlier attempt of this run, else taken now.

    A pinned value goes on as configured. An ``auto`` gate goes on with the suggestion unless the config's guard
    stops it (then it escalates to a review, or fails, as ``guard.on_fail`` says). A ``manual`` gate waits.
    A range test that cannot be read has no suggestion: a pin goes on, a person may override or reject it (a
    ``manual`` gate, or the guard's escalation), and an ``auto`` gate without a guard fails the run.
    Values that go on are remembered in the config's history for the guard of later runs.
    """
    name = record["gate"]
    saved = run.path(f"gate-{name}/decision.json")
    if saved.exists():
        return json.loads(saved.read_text())
    pinned = gate.lr is not None or gate.slice is not None
    unread = record["suggestion"] is None
    if unread and not pinned and gate.policy == "auto" and cfg.guard is None:
        raise CurveError(f"gate {name}: {record['error']}")  # nothing to go on with, and no one to ask
    if unread and not pinned and "tested_range" not in record:  # cached by lrgate < 0.3: no form can be built
        raise CurveError(f"gate {name}: {record['error']} (range test recorded by an older lrgate: start a new run)")
    problem = None
    if gate.policy == "auto" and not pinned and cfg.guard is not None:
        if unread:
            problem = f"the range test cannot be read: {record['error']}"
        else:
            problem = guard_problem(record["suggestion"], cfg.guard, last_value(cfg, name))
    if problem is not None:
        get_run_logger().warning("gate %s: the guard stops the suggestion: %s (%s)", name, problem, cfg.guard.on_fail)
        if cfg.guard.on_fail == "fail":
            raise GuardStop(f"gate {name}: the guard stopped the suggestion: {problem}")
        decision = wait_for_review(cfg, run, record, gate, why=f"the guard stopped the suggestion: {problem}")
        decision["policy"] = "auto, escalated to manual by the guard"
        decision["guard"] = problem
    elif gate.policy == "manual" and not pinned:
        decision = wait_for_review(cfg, run, record, gate)
    else:
        if gate.lr is not None:
            value, source = gate.lr, "pinned lr"
        elif gate.slice is not None:
            value, source = list(gate.slice), "pinned slice"
        else:
            value, source = _suggested_value(record), "suggestion"
        decision = _decision(record, gate, "approve", "auto", value, source=source)
    write_text(saved, json.dumps(decision, indent=2))
    if decision["value"] is not None:
        remember(cfg, name, decision["value"], run.run_id, decision["at"])
    create_markdown_artifact(
        decision_markdown(decision),
        key=artifact_key(cfg, f"decision-{name}"),
        description=f"lrgate decision at gate {name} of run {run.run_id}",
    )
    return decision


def _suggested(s: dict[str, Any] | None) -> str:
    return "none (the curve could not be read)" if s is None else format_value(s["slice"] or s["lr"])


def decision_markdown(d: dict[str, Any]) -> str:
    return (
        f"# Gate {d['gate']}: {d['action']}\n\n| | |\n|---|---|\n| reviewer | {d['reviewer']} |\n| when | {d['at']} |\n"
        f"| policy | {d['policy']} |\n| suggested | {_suggested(d['suggested'])} |\n"
        f"| trained with | {format_value(d['value'])} ({d['source']}) |\n| reason | {d['reason'] or '-'} |\n"
    )
