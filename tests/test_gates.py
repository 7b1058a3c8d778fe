"""Manual gates against a real `prefect server`: runs pause, reviewers answer from another process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lrgate.core.config import load_config
from lrgate.core.gate_records import GateRecord
from lrgate.flows.gates import answer_form
from lrgate.operations.gate_policy import choices, read_answer
from lrgate.operations.review import override_bounds, pending
from tests.conftest import suggestion_record, tiny_config

LRGATE = str(Path(sys.executable).parent / "lrgate")
MANUAL = "gates:\n  frozen: {policy: manual, timeout: 300}\n  unfrozen: {policy: manual, timeout: 300}\n"


def start(config: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [LRGATE, "run", str(config), "--out", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def lrgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LRGATE, *args], capture_output=True, text=True, timeout=120)


def waiting(run_dir: Path, gate: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    """Poll the API until the run in ``run_dir`` waits at ``gate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in pending():
            if r["run_dir"] == str(run_dir) and r["gate"] == gate and r["state"] == "Paused":
                return r
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"run did not wait at gate {gate} within {timeout} s")


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_an_approved_override_slice_is_exactly_what_fine_tune_trains_with(prefect_api, tmp_path):
    run_dir, config = tmp_path / "run", tiny_config(tmp_path, MANUAL)
    proc = start(config, run_dir)
    gate1 = waiting(run_dir, "frozen", proc)
    assert Path(gate1["plot"]).exists() and isinstance(gate1["suggestion"], float)
    assert lrgate("approve", gate1["run_id"], "--reviewer", "alice").returncode == 0

    gate2 = waiting(run_dir, "unfrozen", proc)
    lo, hi = json.loads((run_dir / "gate-unfrozen" / "suggestion.json").read_text())["tested_range"]
    chosen = (lo * 100, hi / 100)  # inside the tested range, and not the suggestion
    out = lrgate("approve", gate2["run_id"], "--slice", f"{chosen[0]!r},{chosen[1]!r}", "--reviewer", "bob")
    assert out.returncode == 0, out.stderr
    code, log = finish(proc)
    assert code == 0, log[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["fine-tune"]["fit_lr"] == list(chosen)
    d1, d2 = summary["decisions"]["frozen"], summary["decisions"]["unfrozen"]
    assert (d1["action"], d1["reviewer"], d1["value"]) == ("approve", "alice", d1["suggested"]["lr"])
    assert summary["metrics"]["train-frozen"]["fit_lr"] == d1["suggested"]["lr"]
    assert (d2["action"], d2["reviewer"], d2["value"]) == ("override", "bob", list(chosen))
    assert json.loads((run_dir / "gate-unfrozen" / "decision.json").read_text())["at"] == d2["at"]
    report = (run_dir / "report.md").read_text()
    assert "override by bob" in report and "approve by alice" in report

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{load_config(config).name}-decision-unfrozen"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[gate2["run_id"]]),
            )
        )
    assert "| reviewer | bob |" in artifact.data and "override" in artifact.data


def test_bad_answers_are_refused_and_the_run_stays_paused_then_a_rejection_stops_it(prefect_api, tmp_path):
    from prefect.flow_runs import resume_flow_run

    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, MANUAL), run_dir)
    gate1 = waiting(run_dir, "frozen", proc)

    # Outside the tested range: refused before it is sent, the bound in 3 significant digits (checked exactly).
    out = lrgate("approve", gate1["run_id"], "--lr", "1e9")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    suggestion = json.loads((run_dir / "gate-frozen" / "suggestion.json").read_text())
    tried = [*suggestion["tested_range"], *(suggestion.get("race") or {}).get("candidates", [])]
    lo, hi = min(tried), max(tried)
    assert gate1["override_range"] == [lo, hi]  # as the flow published it, for the CLI's check
    assert f"an override may be {lo:.3g} .. {hi:.3g}" in lrgate("pending").stdout
    assert f"1e+09 is outside the lrs gate frozen's range test and race tried, {lo:.3g} .. {hi:.3g}" in out.stderr
    # Not a number (what the UI's number input made of 3e-3): the server refuses it against the form's schema.
    with pytest.raises(RuntimeError, match="does not match"):
        resume_flow_run(gate1["run_id"], run_input={"reviewer": "eve", "decision": "override", "lr": "3-3"})
    # The wrong kind of override, and an empty reason: refused before they are sent.
    assert "use --lr" in lrgate("approve", gate1["run_id"], "--slice", "1e-5,1e-3").stderr
    assert "needs a reason" in lrgate("reject", gate1["run_id"], "--reason", " ").stderr
    # Passes the schema but not the flow's check (a typed lr outside the tested range): the gate waits again.
    resume_flow_run(gate1["run_id"], run_input={"reviewer": "eve", "decision": "override", "lr": repr(hi * 10)})
    time.sleep(3)
    again = waiting(run_dir, "frozen", proc)
    assert again["run_id"] == gate1["run_id"]
    assert not (run_dir / "gate-frozen" / "decision.json").exists()

    out = lrgate("reject", gate1["run_id"], "--reason", "loss curve looks broken", "--reviewer", "carol")
    assert out.returncode == 0, out.stderr
    code, log = finish(proc)
    assert code == 3 and "rejected at gate frozen by carol: loss curve looks broken" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["outcome"] == "rejected at gate frozen by carol: loss curve looks broken"
    assert "metrics" not in summary or not summary["metrics"]
    assert not (run_dir / "model.pkl").exists()
    assert "(reason: loss curve looks broken)" in (run_dir / "report.md").read_text()


def test_a_manual_gate_whose_curve_cannot_be_read_shows_the_curve_and_takes_an_override(prefect_api, tmp_path):
    # noise 20 needs 41 points of the tiny range test's 24: no suggestion at gate 1 (gate 2 is pinned)
    unreadable = "suggest: {noise: 20}\ngates:\n  frozen: {policy: manual, timeout: 300}\n"
    unreadable += "  unfrozen: {slice: [1e-5, 1e-4]}\n"
    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, unreadable), run_dir)
    gate1 = waiting(run_dir, "frozen", proc)
    assert gate1["suggestion"] is None and "needs at least 41 finite points" in gate1["error"]
    assert Path(gate1["plot"]).is_file()  # the recorded curve
    # Nothing to approve, and this gate takes one lr: both refused before anything is sent.
    out = lrgate("approve", gate1["run_id"])
    assert out.returncode == 1 and "no suggestion to approve" in out.stderr and "--lr LR" in out.stderr
    assert "use --lr" in lrgate("approve", gate1["run_id"], "--slice", "1e-5,1e-3").stderr
    # The form offers override and reject only: an "approve" sent straight to the API is refused by the server.
    from prefect.flow_runs import resume_flow_run

    with pytest.raises(RuntimeError, match=r"'approve' is not one of \['override', 'reject'\]"):
        resume_flow_run(gate1["run_id"], run_input={"reviewer": "eve", "decision": "approve"})
    lrs = pd.read_csv(run_dir / "gate-frozen" / "curve.csv")["lr"]
    chosen = float(lrs.iloc[len(lrs) // 2])
    out = lrgate("approve", gate1["run_id"], "--lr", repr(chosen), "--reviewer", "dora")
    assert out.returncode == 0, out.stderr
    code, log = finish(proc)
    assert code == 0, log[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    d1 = summary["decisions"]["frozen"]
    assert (d1["action"], d1["reviewer"], d1["value"], d1["suggested"]) == ("override", "dora", chosen, None)
    assert summary["metrics"]["train-frozen"]["fit_lr"] == chosen
    report = (run_dir / "report.md").read_text()
    assert "the range test could not be read: noise=20" in report and "gate-frozen/review.png" in report


@pytest.mark.parametrize(
    ("gates", "code", "expect"),
    [
        (
            "gates:\n  frozen: {policy: manual, timeout: 2, on_timeout: approve}\n"
            "  unfrozen: {policy: manual, timeout: 2, on_timeout: reject}\n",
            3,
            "rejected at gate unfrozen by timeout",
        ),
        (
            "gates:\n  frozen: {policy: manual, timeout: 2, on_timeout: fail}\n",
            1,
            "no review within 2 s (on_timeout: fail)",
        ),
    ],
    ids=["approve-then-reject", "fail"],
)
def test_a_timeout_follows_its_declared_outcome(prefect_api, tmp_path, gates, code, expect):
    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, gates), run_dir)
    got, log = finish(proc)
    assert got == code and expect in log, log[-3000:]
    if code == 1:  # lrgate's own error: one line in the log and one on stderr, no stack through Prefect's engine
        assert "Traceback" not in log and "GateTimeout('gate frozen: no review within 2 s" in log
    if code == 3:
        decision = json.loads((run_dir / "gate-frozen" / "decision.json").read_text())
        assert decision["action"] == "approve" and decision["reviewer"] == "timeout"
        assert json.loads((run_dir / "metrics-train-frozen.json").read_text())["fit_lr"] == decision["suggested"]["lr"]


def test_cli_needs_the_api_url(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([LRGATE, "pending"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "PREFECT_API_URL is not set" in out.stderr


def test_an_unreadable_gate_cached_by_an_older_lrgate_fails_with_a_clear_reason():
    # lrgate < 0.3 cached an unreadable range test without the tested range a form needs: no KeyError, a reason,
    # where the pipeline reads the stage's record (before the gate decides)
    from lrgate.core.errors import CurveError

    old = {"gate": "frozen", "suggestion": None, "error": "the curve is empty", "curve_csv": "c.csv", "seconds": 1}
    with pytest.raises(CurveError, match="the curve is empty .*recorded by an older lrgate: start a new run"):
        GateRecord.read(old, "gate frozen's range test")


def gate_record(takes_slice: bool = False, race: bool = True, candidates=(1e-3, 3e-4, 3e-3)) -> GateRecord:
    """A gate's record as the lr-suggest stage returns it."""
    suggestion = suggestion_record(
        state="unfrozen" if takes_slice else "frozen",
        lr=1e-3,
        slice=[1e-4, 1e-3] if takes_slice else None,
        tested_range=[1e-7, 0.5],
        race={"candidates": list(candidates), "slice_ratio": 10.0 if takes_slice else None} if race else None,
    )
    gate = "unfrozen" if takes_slice else "frozen"
    return GateRecord.read(
        {"gate": gate, "suggestion": suggestion.to_json(), "plot": "review.png", "curve_csv": "curve.csv", "seconds": 1}
    )


def test_the_form_offers_the_suggestion_and_the_race_candidates_and_reads_a_typed_lr_in_any_notation():
    record = gate_record()
    form = answer_form(record)
    schema = form.model_json_schema()["properties"]
    assert schema["choice"]["enum"] == [
        "1.00e-03 (suggestion)",
        "3.00e-04 (race candidate)",
        "3.00e-03 (race candidate)",
    ]
    assert schema["choice"]["default"] == "1.00e-03 (suggestion)"  # the pick list never starts empty
    assert schema["lr"]["type"] == "string"  # the UI's number input would drop the "e" of 3e-3
    for typed in ("3e-3", "0.003", "3E-3", " 3.0e-03 "):
        assert read_answer(form(reviewer="ann", decision="override", lr=typed), record) == (0.003, None)
    assert read_answer(form(reviewer="ann", decision="override", choice="3.00e-04 (race candidate)"), record) == (
        3e-4,
        None,
    )
    assert read_answer(form(reviewer="ann", decision="override"), record) == (1e-3, None)  # the default choice
    assert read_answer(form(reviewer="ann"), record) == (1e-3, None)  # approve
    for bad in ("3-3", "e-3", "-0.003", "0.003 lr"):
        with pytest.raises(ValueError, match="should match pattern"):
            form(reviewer="ann", decision="override", lr=bad)
    # What the schema cannot say, the flow checks: the bounds, and an approval that picked another value.
    assert read_answer(form(reviewer="ann", decision="override", lr="2"), record)[1] == (
        "2 is outside the lrs the range test and the race tried, 1e-07 .. 0.5"
    )
    assert "set decision to override" in read_answer(form(reviewer="ann", lr="3e-3"), record)[1]


def test_a_race_candidate_past_the_range_tests_end_can_be_picked_and_typed_and_bounds_an_override():
    # before unfreeze the race's candidates reach half a decade past where the range test stopped (REACH_DECADES)
    record = gate_record(candidates=[0.1, 0.5, 1.6])
    assert record.tested_range == (1e-7, 0.5) and record.override_range == (1e-7, 1.6)
    form = answer_form(record)
    assert "1e-07 .. 1.6, e.g." in form.model_json_schema()["properties"]["lr"]["description"]
    assert read_answer(form(reviewer="bo", decision="override", choice="1.60e+00 (race candidate)"), record) == (
        1.6,
        None,
    )
    assert read_answer(form(reviewer="bo", decision="override", lr="1"), record) == (1.0, None)
    assert read_answer(form(reviewer="bo", decision="override", lr="2"), record)[1] == (
        "2 is outside the lrs the range test and the race tried, 1e-07 .. 1.6"
    )


def test_the_cli_bounds_an_override_by_what_the_waiting_gate_published():
    info = {"tested_range": [1e-7, 0.5], "override_range": [1e-7, 1.6]}
    assert override_bounds(info) == (1e-7, 1.6)  # the range test's and the race's lrs
    assert override_bounds({"tested_range": [1e-7, 0.5]}) == (1e-7, 0.5)  # published by lrgate < 0.10
    assert override_bounds({}) is None  # older still: the flow checks it alone


def test_a_slice_gates_choices_are_slices_and_a_typed_slice_needs_both_ends():
    record = gate_record(takes_slice=True)
    assert list(choices(record)) == [
        "slice(1.00e-04, 1.00e-03) (suggestion)",
        "slice(3.00e-05, 3.00e-04) (race candidate)",
        "slice(3.00e-04, 3.00e-03) (race candidate)",
    ]
    form = answer_form(record)
    assert read_answer(form(reviewer="bo", decision="override", slice_lo="1e-5", slice_hi="1E-4"), record) == (
        [1e-5, 1e-4],
        None,
    )
    assert "needs both" in read_answer(form(reviewer="bo", decision="override", slice_lo="1e-5"), record)[1]
    assert (
        "must not exceed"
        in read_answer(form(reviewer="bo", decision="override", slice_lo="1e-3", slice_hi="1e-4"), record)[1]
    )
    # a slice gate whose race raced no slices (race: off) offers the suggestion alone
    assert list(choices(gate_record(takes_slice=True, race=False))) == ["slice(1.00e-04, 1.00e-03) (suggestion)"]
