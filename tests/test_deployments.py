"""deployments/prefect.yaml deploys to a real server, and process workers run its deployments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrgate.core.config import load_config
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PWD": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    out = subprocess.run([*args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def worker_once() -> None:
    """A process worker polls the pool once and runs what is due (as `prefect worker start` does forever)."""
    cli(str(BIN / "prefect"), "worker", "start", "--pool", "lrgate-gpu", "--run-once")


def flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def trigger(deployment: str, config: Path) -> str:
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"config": str(config)}, timeout=0)
    return str(run.id)


@pytest.fixture(scope="module")
def deployed(prefect_api):
    cli(str(BIN / "prefect"), "work-pool", "create", "lrgate-gpu", "--type", "process", "--overwrite")
    out = cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    assert "scheduled-retraining" in out.stdout and "manual-review" in out.stdout
    return prefect_api


def test_the_scheduled_deployment_is_declared_as_the_yaml_says(deployed):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        d = client.read_deployment_by_name("lrgate-pipeline/scheduled-retraining")
    assert d.work_pool_name == "lrgate-gpu" and d.parameters == {"config": "configs/scheduled.yaml"}
    assert [s.schedule.cron for s in d.schedules] == ["0 3 * * 1"]


def test_a_worker_runs_a_scheduled_style_run_to_completion(deployed, tmp_path):
    config = tiny_config(tmp_path)
    name = load_config(config).name
    run_id = trigger("lrgate-pipeline/scheduled-retraining", config)
    worker_once()
    run = flow_run(run_id)
    assert run.state.is_completed(), run.state
    (folder,) = (tmp_path / "runs").glob(f"{name}-2*")
    assert (folder / "model.pkl").exists()
    assert (tmp_path / "runs" / f"{name}-latest").resolve() == folder.resolve()  # promoted: the first model


def test_a_deployed_manual_gate_suspends_and_resumes_with_finished_stages_cached(deployed, tmp_path):
    manual = "gates:\n  frozen: {policy: manual, timeout: 600}\n  unfrozen: {policy: manual, timeout: 600}\n"
    config = tiny_config(tmp_path, manual)
    run_id = trigger("lrgate-pipeline/manual-review", config)
    lrgate = str(BIN / "lrgate")
    for gate in ("frozen", "unfrozen"):
        worker_once()  # runs until the gate suspends the run: the process (and its GPU) is freed
        state = flow_run(run_id).state
        assert state.name == "Suspended", state
        out = cli(lrgate, "approve", run_id, "--reviewer", "dora")
        assert f"gate {gate}" in out.stdout
        deadline = time.monotonic() + 30
        while not flow_run(run_id).state.is_scheduled():  # resumed: due for a worker again
            assert time.monotonic() < deadline, flow_run(run_id).state
            time.sleep(0.5)
    worker_once()
    assert flow_run(run_id).state.is_completed()
    (folder,) = (tmp_path / "runs").glob(f"{load_config(config).name}-2*")
    summary = json.loads((folder / "summary.json").read_text())
    # The last re-run took the earlier stages from the cache: only fine-tune and export ran in it.
    assert summary["stage_states"]["train-frozen"] == summary["stage_states"]["gate-unfrozen"] == "Cached"
    assert summary["stage_states"]["fine-tune"] == "Completed"
    assert summary["decisions"]["unfrozen"]["reviewer"] == "dora"
    # Each gate waited once; the re-run after its resume says what happened instead of waiting (and suspending) again.
    logs = [r.message for r in run_logs(run_id)]
    assert sum("waits for review" in m for m in logs) == 2, logs
    assert sum(m.startswith("Suspending flow run") for m in logs) == 2, logs
    assert [m for m in logs if "answered while suspended" in m] == [
        "gate frozen: answered while suspended, by dora: approve",
        "gate unfrozen: answered while suspended, by dora: approve",
    ]


def run_logs(run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))


def test_a_deployed_run_rejected_at_a_gate_ends_cancelled_with_one_line_and_no_traceback(deployed, tmp_path):
    manual = "gates:\n  frozen: {policy: manual, timeout: 600}\n"
    config = tiny_config(tmp_path, manual)
    run_id = trigger("lrgate-pipeline/manual-review", config)
    worker_once()
    assert flow_run(run_id).state.name == "Suspended"
    cli(str(BIN / "lrgate"), "reject", run_id, "--reason", "curve looks broken", "--reviewer", "erin")
    deadline = time.monotonic() + 30
    while not flow_run(run_id).state.is_scheduled():
        assert time.monotonic() < deadline, flow_run(run_id).state
        time.sleep(0.5)
    out = cli(str(BIN / "prefect"), "worker", "start", "--pool", "lrgate-gpu", "--run-once")
    state = flow_run(run_id).state
    assert state.is_cancelled(), state
    assert state.message == "rejected at gate frozen by erin: curve looks broken"
    worker_log = out.stdout + out.stderr
    assert "Traceback" not in worker_log and "unexpected exception" not in worker_log, worker_log[-3000:]
    logs = run_logs(run_id)
    assert not [r.message for r in logs if r.level >= 40 or "Traceback" in r.message]
    # the rejection is said once by lrgate (with the report's path), and once in Prefect's own final line
    said = [r.message for r in logs if "rejected at gate frozen" in r.message]
    assert len(said) == 2 and said[0].startswith("rejected at gate frozen by erin: curve looks broken: report "), said
    assert said[1] == f"Finished in state Cancelled({state.message!r})"
    (folder,) = (tmp_path / "runs").glob(f"{load_config(config).name}-2*")
    assert json.loads((folder / "summary.json").read_text())["outcome"] == state.message
    assert not (folder / "model.pkl").exists()
