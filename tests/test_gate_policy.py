"""The gate policy and its records, without a server: what a pin, the guard, a timeout and an answer each mean."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lrgate.core.config import GateConfig, GuardConfig
from lrgate.core.errors import CurveError
from lrgate.core.gate_records import SCHEMA_VERSION, Decision, GateRecord, RecordError
from lrgate.operations.gate_policy import (
    GateTimeout,
    GuardStop,
    Review,
    answered,
    decide,
    escalated,
    on_timeout,
)
from tests.conftest import suggestion_record

GUARD = GuardConfig(lr_range=(1e-5, 1e-1), max_decades_from_last=1.0)


def record(lr: float = 1e-3, warnings: tuple[str, ...] = (), unread: bool = False) -> GateRecord:
    files = {"plot": "review.png", "curve_csv": "curve.csv", "seconds": 1.0}
    if unread:
        return GateRecord(
            gate="frozen",
            suggestion=None,
            error="the curve is flat",
            state="frozen",
            takes_slice=False,
            tested_range=(1e-7, 1.0),
            **files,
        )
    s = suggestion_record(lr=lr, warnings=list(warnings))
    return GateRecord.read({"gate": "frozen", "suggestion": s.to_json(), "choices": "...", **files})


def answer(decision: str = "approve", lr: str = "", reason: str = "", reviewer: str = "ann"):
    return SimpleNamespace(reviewer=reviewer, decision=decision, lr=lr, reason=reason)


def test_an_auto_gate_goes_on_with_the_suggestion():
    d = decide(record(), GateConfig(), guard=None, last=None)
    assert isinstance(d, Decision)
    assert (d.action, d.reviewer, d.source, d.value, d.policy) == ("approve", "auto", "suggestion", 1e-3, "auto")
    assert d.suggested.lr == 1e-3


@pytest.mark.parametrize(
    ("gate", "value", "source"),
    [
        (GateConfig(lr=2e-3), 2e-3, "pinned lr"),
        (GateConfig(slice=(1e-5, 1e-4)), [1e-5, 1e-4], "pinned slice"),
        (GateConfig(policy="manual", lr=2e-3), 2e-3, "pinned lr"),  # a pin needs nobody
    ],
)
def test_a_pin_goes_on_as_configured_even_when_the_curve_cannot_be_read(gate, value, source):
    for r in (record(), record(unread=True)):
        d = decide(r, gate, guard=GUARD, last=None)
        assert (d.value, d.source) == (value, source)


def test_a_manual_gate_asks_a_person():
    assert decide(record(), GateConfig(policy="manual"), guard=GUARD, last=None) == Review()


def test_the_guard_escalates_or_fails_and_says_why():
    step = decide(record(lr=1e-6), GateConfig(), guard=GUARD, last=None)
    assert isinstance(step, Review) and "outside the allowed range" in step.why
    decision = escalated(answered(record(lr=1e-6), GateConfig(), answer("override", lr="2e-5")), step)
    assert decision.policy == "auto, escalated to manual by the guard" and decision.guard == step.guard
    with pytest.raises(GuardStop, match="gate frozen: the guard stopped the suggestion: .* 3.0 decades from the last"):
        decide(record(lr=1e-3), GateConfig(), guard=GUARD.model_copy(update={"on_fail": "fail"}), last=1.0)
    assert isinstance(decide(record(warnings=("no minimum",)), GateConfig(), guard=GUARD, last=None), Review)
    assert isinstance(decide(record(unread=True), GateConfig(), guard=GUARD, last=None), Review)


def test_an_unattended_gate_with_an_unreadable_curve_and_no_guard_fails():
    with pytest.raises(CurveError, match="gate frozen: the curve is flat"):
        decide(record(unread=True), GateConfig(), guard=None, last=None)


def test_a_timeout_does_what_the_gate_says():
    d = on_timeout(record(), GateConfig(policy="manual", on_timeout="approve", timeout=5))
    assert (d.action, d.reviewer, d.value, d.reason) == ("approve", "timeout", 1e-3, "no answer within 5 s")
    d = on_timeout(record(), GateConfig(policy="manual", on_timeout="reject"))
    assert d.rejected and d.source == "reject"
    with pytest.raises(GateTimeout, match="on_timeout: fail"):
        on_timeout(record(), GateConfig(policy="manual"))
    with pytest.raises(GateTimeout, match="no suggestion to approve"):
        on_timeout(record(unread=True), GateConfig(policy="manual", on_timeout="approve"))


def test_an_answer_makes_a_decision_or_says_what_is_wrong():
    gate = GateConfig(policy="manual")
    d = answered(record(), gate, answer("override", lr="3e-3", reason="smoother"))
    assert (d.action, d.source, d.value, d.reviewer, d.reason) == ("override", "override", 3e-3, "ann", "smoother")
    assert answered(record(), gate, answer("reject")) == "a rejection needs a reason"
    assert "outside the lrs the range test and the race tried" in answered(record(), gate, answer("override", lr="5"))


def test_records_keep_their_json_shape_with_a_schema_version():
    r = record()
    on_disk = json.loads(json.dumps(r.to_json()))
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert "schema_version" not in on_disk["suggestion"] and "race" not in on_disk["suggestion"]  # the CLI's shape
    assert GateRecord.read(on_disk) == r
    d = decide(r, GateConfig(), guard=None, last=None)
    assert Decision.read(json.loads(json.dumps(d.to_json()))) == d


def test_a_record_written_by_lrgate_0_4_0_is_read():
    # 0.4.0 wrote no schema_version, and state / takes_slice / tested_range only on unreadable gates
    old = record().to_json()
    for key in ("schema_version", "state", "takes_slice", "tested_range", "gpu_slot", "artifact_id"):
        old.pop(key)
    r = GateRecord.read(old)
    assert (r.state, r.takes_slice, r.tested_range, r.value) == ("frozen", False, (1e-7, 1.0), 1e-3)


def test_a_record_from_a_newer_lrgate_or_missing_a_field_is_refused_in_one_line():
    newer = {**record().to_json(), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(RecordError, match=f"schema_version {SCHEMA_VERSION + 1} is newer than this lrgate reads"):
        GateRecord.read(newer, "run/.prefect-results/x")
    d = decide(record(), GateConfig(), guard=None, last=None).to_json()
    del d["reviewer"]
    with pytest.raises(RecordError, match=r"decision.json: not a Decision this lrgate can read \(reviewer: Field"):
        Decision.read(d, "decision.json")
