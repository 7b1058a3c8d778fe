"""The gates between stages: go on by themselves (``auto``) or wait for a person (``manual``).

A manual gate pauses the flow run with a Prefect ``RunInput`` form: approve, override (one of the gate's choices
from a pick list, or a typed lr or slice) or reject with a reason, and a required reviewer. The form's description
carries the suggestion, the choices table and the review plot (embedded as a PNG data URI), so the Prefect UI shows
everything on one page. The server checks what the form's schema says (a choice from the list, a typed value that
reads as a number); the rest (inside the lrs the range test and race tried, lo <= hi, a reason to reject) is checked
by the gate policy (:func:`lrgate.operations.gate_policy.read_answer`), and the gate waits again with the reason
shown.

A deployed run suspends (its process and GPU are freed; on resume the flow re-runs and finished stages come
back cached); a local run pauses in place, having released its GPU memory first. Each decision is written to
``gate-<name>/decision.json`` (so a resumed run never asks twice), into the run report, and as an artifact.

What each outcome means (a pin, the guard, a timeout, a refused answer) is the gate policy's, in
:mod:`lrgate.operations.gate_policy`; this module is its Prefect side.
"""

from __future__ import annotations

import gc
import itertools
import json
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, PrefectHTTPStatusError
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput, create_flow_run_input
from prefect.runtime import deployment, flow_run
from pydantic import Field, create_model

from lrgate.core.config import GateConfig, RunConfig
from lrgate.core.gate_records import Decision, GateRecord
from lrgate.core.outputs import write_text
from lrgate.core.run_dir import RunInfo
from lrgate.operations.gate_policy import GuardStop, Review, answered, choices, decide, escalated, on_timeout
from lrgate.operations.guard import last_value, remember
from lrgate.operations.report import decision_markdown, gate_markdown
from lrgate.tasks.stages import artifact_key

POLL_SECONDS = 2
PENDING_KEY = "lrgate-gate-{gate}"  # flow-run input that `lrgate pending` reads


# A typed lr: digits with an optional point and exponent (3e-3, 0.003, 3E-3, 1.5e-04); empty takes the pick list.
# A string, not a number: the Prefect UI's number input drops the "e" of 3e-3 (the answer then arrives empty).
TYPED_LR = r"^\s*(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?)?\s*$"


def answer_form(record: GateRecord) -> type[RunInput]:
    """The gate's form: a decision, a pick list of the gate's choices (the suggestion is the default), and a typed
    override as text (``3e-3`` or ``0.003``) that wins over the pick list when given. A typed value's bounds
    (:attr:`~lrgate.core.gate_records.GateRecord.override_range`: the lrs the range test and the race tried) are the
    flow's to check (:func:`~lrgate.operations.gate_policy.read_answer`): a JSON schema bounds numbers, not text. A
    gate whose curve could not be read has no suggestion: its form offers override and reject only."""
    suggested = record.suggestion is not None
    lo, hi = record.override_range
    picks = list(choices(record))
    decisions = Literal["approve", "override", "reject"] if suggested else Literal["override", "reject"]
    fields: dict[str, Any] = {
        "reviewer": (str, Field(min_length=1, description="who decides (required)")),
        "decision": (decisions, Field("approve" if suggested else "override", description="what to do")),
    }
    if picks:
        fields["choice"] = (
            Literal[tuple(picks)],
            Field(picks[0], description="override: train with this one of the gate's choices"),
        )
    typed = f"{lo:.3g} .. {hi:.3g}, e.g. 3e-3 or 0.003"  # the bounds as the refusal states them (3.16, not 3.2)
    either = "; when given, it wins over the choice" if picks else ""
    if not record.takes_slice:
        fields["lr"] = (str, Field("", pattern=TYPED_LR, description=f"override: or type an lr, {typed}{either}"))
    else:
        for end in ("lo", "hi"):
            fields[f"slice_{end}"] = (
                str,
                Field("", pattern=TYPED_LR, description=f"override: or type the slice's {end}, {typed}{either}"),
            )
    fields["reason"] = (str, Field("", description="why (required to reject)"))
    return create_model(f"Gate{record.gate.title()}Answer", __base__=RunInput, **fields)


def _artifact_url(record: GateRecord) -> str | None:
    """The UI page of the gate's review artifact (the form's page at full width), when the UI's address is known."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui}/artifacts/artifact/{record.artifact_id}" if ui and record.artifact_id else None


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


def _wait(cfg: RunConfig, record: GateRecord, gate: GateConfig, wait, form: type[RunInput], key: str, attempt: int):
    """Announce the gate (log line with the UI link, event), pause or suspend until its form is answered; return the
    answer, or None when the gate's timeout ran out."""
    logger = get_run_logger()
    name = record.gate
    logger.info(
        "gate %s waits for review: %s (answer in the UI, or `lrgate approve %s`)", name, flow_run.ui_url, flow_run.id
    )
    emit_event(
        "lrgate.gate.waiting",
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}"},
        payload={
            "gate": name,
            "config": cfg.name,
            "suggestion": record.value,
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
        return None


def wait_for_review(cfg: RunConfig, run: RunInfo, record: GateRecord, gate: GateConfig, review: Review) -> Decision:
    """Pause (or, when deployed, suspend) until a person answers the gate's form; return the decision.

    ``review.why`` (the guard's reason, when it escalated an ``auto`` gate) heads the form's description.
    """
    logger = get_run_logger()
    name = record.gate
    form = answer_form(record)
    page = gate_markdown(record, f"Review gate {name} of run {run.run_id}", full_page=_artifact_url(record))
    try:
        create_flow_run_input(
            PENDING_KEY.format(gate=name),
            {
                "gate": name,
                "suggestion": None if record.suggestion is None else record.suggestion.to_json(),
                "error": record.error,
                "takes_slice": record.takes_slice,
                "tested_range": list(record.tested_range),
                "override_range": list(record.override_range),
                "plot": record.plot,
                "run_dir": str(run.run_dir),
            },
        )
    except PrefectHTTPStatusError as e:
        if e.response.status_code != 409:  # 409: published already, by this run before it was suspended
            raise
    _release_accelerator()
    if record.suggestion is None and gate.on_timeout == "approve":
        logger.warning(
            "gate %s has no suggestion to approve: unless someone answers within %d s the run fails", name, gate.timeout
        )
    wait = suspend_flow_run if deployment.id else pause_flow_run
    note = f"**Escalated to review: {review.why}.**\n\n" if review.why else ""
    for attempt in itertools.count(1):  # until an answer passes the checks the schema cannot make
        key = f"gate-{name}-{attempt}"
        answer = _answered_while_suspended(form, key) if wait is suspend_flow_run else None
        if answer is not None:  # a deployed run's re-run after the resume: say what happened, not "waits" again
            logger.info("gate %s: answered while suspended, by %s: %s", name, answer.reviewer, answer.decision)
        else:
            answer = _wait(cfg, record, gate, wait, form.with_initial_data(description=note + page), key, attempt)
            if answer is None:  # no answer within the gate's timeout
                return on_timeout(record, gate)
        outcome = answered(record, gate, answer)
        if isinstance(outcome, Decision):
            return outcome
        logger.warning("gate %s: answer refused: %s; waiting again", name, outcome)
        note = f"**Your last answer was refused: {outcome}.**\n\n"


def gate_decision(cfg: RunConfig, run: RunInfo, record: GateRecord, gate: GateConfig) -> Decision:
    """The gate's decision: kept from an earlier attempt of this run, else taken now by the gate policy
    (:func:`~lrgate.operations.gate_policy.decide`), asking a person when it says so. Values that go on are
    remembered in the config's history for the guard of later runs."""
    name = record.gate
    saved = run.path(f"gate-{name}/decision.json")
    if saved.exists():
        return Decision.read(json.loads(saved.read_text()), str(saved))
    logger = get_run_logger()
    stopped = "gate %s: the guard stops the suggestion: %s (%s)"
    try:
        step = decide(record, gate, cfg.guard, last_value(cfg, name))
    except GuardStop as e:
        logger.warning(stopped, name, e.problem, cfg.guard.on_fail)
        raise
    if isinstance(step, Review):
        if step.guard:
            logger.warning(stopped, name, step.guard, cfg.guard.on_fail)
        decision = escalated(wait_for_review(cfg, run, record, gate, step), step)
    else:
        decision = step
    write_text(saved, json.dumps(decision.to_json(), indent=2))
    if decision.value is not None:
        remember(cfg, name, decision.value, run.run_id, decision.at)
    create_markdown_artifact(
        decision_markdown(decision),
        key=artifact_key(cfg, f"decision-{name}"),
        description=f"lrgate decision at gate {name} of run {run.run_id}",
    )
    return decision
