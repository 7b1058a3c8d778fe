"""Manual gates against a real `prefect server`: runs pause, reviewers answer from another process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lrgate.review import pending
from tests.conftest import tiny_config

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
    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, MANUAL), run_dir)
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
                key=ArtifactFilterKey(any_=["tiny-decision-unfrozen"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[gate2["run_id"]]),
            )
        )
    assert "| reviewer | bob |" in artifact.data and "override" in artifact.data


def test_bad_answers_are_refused_and_the_run_stays_paused_then_a_rejection_stops_it(prefect_api, tmp_path):
    from prefect.flow_runs import resume_flow_run

    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, MANUAL), run_dir)
    gate1 = waiting(run_dir, "frozen", proc)

    # Outside the tested range: the server refuses it against the form's schema.
    out = lrgate("approve", gate1["run_id"], "--lr", "1e9")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "the server refused the answer" in out.stderr and "greater than the maximum" in out.stderr
    # The bound in 3 significant digits, not at full precision (the server's check is exact).
    hi = json.loads((run_dir / "gate-frozen" / "suggestion.json").read_text())["tested_range"][1]
    assert f"greater than the maximum of {hi:.3g}" in out.stderr and repr(hi) not in out.stderr
    # The wrong kind of override, and an empty reason: refused before they are sent.
    assert "use --lr" in lrgate("approve", gate1["run_id"], "--slice", "1e-5,1e-3").stderr
    assert "needs a reason" in lrgate("reject", gate1["run_id"], "--reason", " ").stderr
    # Passes the schema but not the flow's check (an override without its value): the gate waits again.
    resume_flow_run(gate1["run_id"], run_input={"reviewer": "eve", "decision": "override"})
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
    proc = start(tiny_config(tmp_path, unreadable, name="tiny-unreadable"), run_dir)
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


def test_an_unreadable_gate_cached_by_an_older_lrgate_fails_with_a_clear_reason(tmp_path):
    # lrgate < 0.3 cached an unreadable range test without the tested range a form needs: no KeyError, a reason.
    from lrgate.flows.gates import gate_decision

    from lrgate.config import load_config
    from lrgate.errors import CurveError
    from lrgate.run_dir import open_run

    config = tiny_config(tmp_path, "gates:\n  frozen: {policy: manual}\n")
    cfg = load_config(config)
    run, _ = open_run(cfg, config, tmp_path / "run", "fingerprint")
    old = {"gate": "frozen", "suggestion": None, "error": "the curve is empty", "curve_csv": "c.csv", "seconds": 1}
    with pytest.raises(CurveError, match="the curve is empty .*recorded by an older lrgate: start a new run"):
        gate_decision(cfg, run, old, cfg.gates.frozen)
