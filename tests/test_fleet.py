"""The fleet: three tiny configs (and one broken) through a deployment, two process workers and a GPU limit of 1.

The deployed runs hold one slot of the limit per range test and per fit; the limit's own acquired/released
events, read back from the Prefect API, show that no two of those stages overlapped while the runs themselves did.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from lrgate.cli import main
from lrgate.core.fleet_config import FleetConfigError, load_fleet
from lrgate.operations.fleet_report import fleet_outcome, member_row
from tests.conftest import make_image_folder, suggestion_record, tiny_config
from tests.local_prefect import start_workers, stop_groups

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "fleet-test"
LIMIT = "fleet-test-gpu"
NAMES = ("tiny-a", "tiny-b", "tiny-c")


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_fleet(folder: Path, entries: list[str], extra: str = "") -> Path:
    path = folder / "fleet.yaml"
    path.write_text(
        "name: fleet-test\nconfigs:\n" + "".join(f"  - {e}\n" for e in entries) + "output_dir: out\n" + extra
    )
    return path


@pytest.fixture(scope="module")
def deployed(prefect_api, tmp_path_factory):
    """The pipeline deployed as ``fleet-member`` on its own process pool, a GPU limit of 1, two workers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate

    from lrgate.flows.pipeline import pipeline

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT, limit=1))
        client.create_work_queue("second", work_pool_name=POOL)  # the workers serve every queue of the pool
    pipeline.from_source(str(ROOT), "flows/pipeline.py:pipeline").deploy(
        name="fleet-member", work_pool_name=POOL, print_next_steps=False, ignore_warnings=True
    )
    # one flow run at a time each, polling every second; stopping them stops the runs they started
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": "1", "LRGATE_GPU_LIMIT": LIMIT}
    workers = start_workers(POOL, 2, env, tmp_path_factory.mktemp("workers"), cwd=ROOT)
    try:
        yield prefect_api
    finally:
        stop_groups(workers, timeout=20)


@pytest.fixture(scope="module")
def fleet_run(deployed, tmp_path_factory):
    """One fleet of three tiny configs and one whose data holds a corrupt image, run by ``lrgate fleet``; the last
    tiny one goes to another work queue with its own job variables."""
    folder = tmp_path_factory.mktemp("fleet")
    entries = []
    for name in NAMES:
        (folder / name.removeprefix("tiny-")).mkdir()
        config = tiny_config(folder / name.removeprefix("tiny-"), name=name)
        entries.append(str(config.relative_to(folder)))
    broken = folder / "broken"
    broken.mkdir()
    (make_image_folder(broken / "img") / "circle" / "bad.png").write_text("not an image")
    text = tiny_config(broken, name="broken").read_text()
    (broken / "tiny.yaml").write_text(text.replace("{source: demo, per_class: 12}", "{source: folder, path: img}"))
    entries[-1] = f"{{config: {entries[-1]}, work_queue: second, job_variables: {{env: {{LRGATE_MARK: c}}}}}}"
    entries.append("broken/tiny.yaml")
    # The test holds the GPU slot itself until two of the runs are Running (on their way to, or blocked at, their
    # first range test), so the runs overlap however slowly the workers start them: runs queued on a busy GPU.
    # (a copy of this context: the Prefect settings that point at the test server live in context variables)
    held: dict[str, object] = {}
    holder = threading.Thread(
        target=contextvars.copy_context().run, args=(hold_the_slot_until_two_runs_wait, held), daemon=True
    )
    holder.start()
    code, out, err = run_cli("fleet", str(write_fleet(folder, entries)))
    holder.join(timeout=30)
    assert not holder.is_alive(), "the test's own hold of the GPU slot never ended"
    report = Path(out.split("report: ")[-1].strip())
    return {
        "code": code,
        "out": out,
        "err": err,
        "report": report,
        "rows": json.loads((report.parent / "fleet.json").read_text()),
        "held": held,
    }


def read_flow_runs(names):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=list(names))))


RUN_NAMES = [f"fleet-test-{i}-{n}" for i, n in enumerate(NAMES, 1)]


def hold_the_slot_until_two_runs_wait(held: dict[str, object], wait_s: float = 240) -> None:
    """Take the limit's one slot and keep it until two of the tiny runs are Running, or ``wait_s`` passes; write
    into ``held`` how many were running when it let go (or the error that kept it from the slot)."""
    from prefect.concurrency.sync import concurrency

    try:
        with concurrency(LIMIT, occupy=1, strict=True):
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    runs = read_flow_runs(RUN_NAMES)
                except Exception:  # noqa: BLE001  (a busy server's hiccup: ask again)
                    time.sleep(1)
                    continue
                held["running"] = sum(r.state is not None and r.state.is_running() for r in runs)
                if held["running"] >= 2:
                    return
                time.sleep(0.5)
    except Exception as e:  # the test that reads ``held`` fails with it
        held["error"] = repr(e)


def held_slots(limit: str, expected: int, wait_s: float = 30) -> dict[str, dict]:
    """The limit's slot holds, from its ``prefect.concurrency-limit.acquired/released`` events in the Prefect API:
    ``{task run id: {"name", "acquired", "released"}}``; waits until ``expected`` holds are complete (events are
    sent by the run's process after the fact)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        resource = f"prefect.concurrency-limit.{client.read_global_concurrency_limit_by_name(limit).id}"
        names = ["prefect.concurrency-limit.acquired", "prefect.concurrency-limit.released"]
        deadline = time.monotonic() + wait_s
        while True:  # (a filter's time window ends when it is made: make one per attempt)
            query = EventFilter(event=EventNameFilter(name=names), resource=EventResourceFilter(id=[resource]))
            page = client.read_events(query, limit=50)
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(page.next_page)
                events += page.events
            holds: dict[str, dict] = {}
            for e in events:
                task_runs = [r for r in e.related if r.role == "task-run"]
                if not task_runs:  # the test's own hold (see hold_the_slot_until_two_runs_wait)
                    continue
                (task_run,) = task_runs
                holds.setdefault(task_run.id, {"name": task_run.name})[e.event.rsplit(".", 1)[1]] = e.occurred
            complete = {k: v for k, v in holds.items() if {"acquired", "released"} <= set(v)}
            if len(complete) >= expected or time.monotonic() > deadline:
                return complete
            time.sleep(1)


def test_the_fleet_runs_every_config_and_reports_each_row(fleet_run):
    rows = {Path(r["config"]).parent.name: r for r in fleet_run["rows"]}
    assert len(rows) == 4
    for name in ("a", "b", "c"):
        row = rows[name]
        assert row["state"] == "Completed" and row["message"] == "finished", row
        assert row["gate_1_by"] == row["gate_2_by"] == "approve by auto"
        assert row["gate_1"].endswith("(suggestion)") and row["gate_2"].startswith("slice(")
        assert row["gate_1"].startswith(row["gate_1_suggested"]) and row["gate_2"].startswith(row["gate_2_suggested"])
        assert 0 <= row["accuracy"] <= 1
        assert Path(row["gate_1_plot"]).is_file() and Path(row["gate_2_plot"]).is_file()
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["gate_1"].startswith(f"{summary['decisions']['frozen']['value']:.2e}")
    page = fleet_run["report"].read_text()
    assert page.count("\n| ") == 5  # the header and four runs
    assert "[plot](../../a/runs/" in page  # plot links relative to the report


def test_one_failed_run_never_stops_the_others_and_the_fleet_says_how_many_failed(fleet_run):
    broken = next(r for r in fleet_run["rows"] if Path(r["config"]).parent.name == "broken")
    assert broken["state"] == "Failed" and "bad.png" in broken["message"]
    assert broken["accuracy"] is None and broken["gate_1"] == "-"
    assert fleet_run["code"] == 1 and "lrgate: 1 of 4 runs failed" in fleet_run["err"]
    # The fleet's own run ends Failed with that message; its runs are its subflows.
    run_id = fleet_run["report"].read_text().split("fleet run: `")[1].split("`")[0]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(run_id)
        children = read_flow_runs(r["run"] for r in fleet_run["rows"])
        parent_tasks = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}
    assert parent.state.is_failed() and parent.state.message == "1 of 4 runs failed"
    assert len(children) == 4 and parent_tasks == {parent.id}
    c = next(r for r in children if r.name.endswith("tiny-c"))
    assert c.work_queue_name == "second" and c.job_variables["env"]["LRGATE_MARK"] == "c"


def test_with_a_limit_of_one_no_two_range_tests_or_fits_overlap(fleet_run):
    holds = held_slots(LIMIT, expected=12)  # 3 runs x (2 range tests + 2 fits); the broken run trained nothing
    stages = sorted(h["name"].rsplit("-", 1)[0] for h in holds.values())
    assert stages == ["fine-tune"] * 3 + ["lr-suggest"] * 6 + ["train-frozen"] * 3
    spans = sorted((h["acquired"], h["released"]) for h in holds.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"two stages held the GPU at once: one until {end}, the next from {start}"
    # ... while the runs themselves did overlap (two workers, the slot held at first): the limit kept the stages apart.
    assert fleet_run["held"] == {"running": 2}, fleet_run["held"]
    runs = sorted((r.start_time, r.end_time) for r in read_flow_runs(RUN_NAMES))
    assert len(runs) == 3 and any(b[0] < a[1] for a, b in zip(runs, runs[1:], strict=False))
    # Each hold lies inside its task run, and the run's metrics record the fit's own times inside the hold.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for task_run_id, h in holds.items():
            t = client.read_task_run(task_run_id.rsplit(".", 1)[1])
            assert t.start_time <= h["acquired"] <= h["released"] <= t.end_time
    for row in fleet_run["rows"][:3]:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        for gate in ("frozen", "unfrozen"):  # the range tests' holds are recorded too
            slot = summary["range_tests"][gate]["gpu_slot"]
            assert slot["limit"] == LIMIT and slot["held_from"] <= slot["held_to"]
        fit = summary["metrics"]["fine-tune"]
        assert fit["gpu_slot"]["limit"] == LIMIT
        held = [datetime.fromisoformat(fit["gpu_slot"][k]) for k in ("held_from", "held_to")]
        assert held[0] <= datetime.fromisoformat(fit["started"]) <= datetime.fromisoformat(fit["ended"]) <= held[1]


@pytest.mark.parametrize("limits", ["no-such-gpu-limit", "gpu-known,no-such-gpu-limit"])
def test_a_gpu_limit_the_server_does_not_know_fails_the_first_gpu_stage(prefect_api, tmp_path, monkeypatch, limits):
    # A list takes a slot of every limit in it (a distributed run's GPUs): one unknown name is enough to fail.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    from lrgate.flows.pipeline import pipeline
    from lrgate.tasks.stages import GpuLimitError

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-known", limit=1))
    monkeypatch.setenv("LRGATE_GPU_LIMIT", limits)
    with pytest.raises(GpuLimitError, match=f"LRGATE_GPU_LIMIT='{limits}': the server has no such global"):
        pipeline(str(tiny_config(tmp_path)), str(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "0-initial.pth").exists()  # built, then stopped: nothing ran
    assert not (tmp_path / "run" / "gate-frozen").exists()


def test_a_fleet_whose_deployment_is_not_on_the_server_starts_nothing(prefect_api, tmp_path):
    config = tiny_config(tmp_path)
    code, _, err = run_cli("fleet", str(write_fleet(tmp_path, [config.name], "deployment: lrgate-pipeline/nope\n")))
    assert code == 1 and "deployment: 'lrgate-pipeline/nope' is not deployed on" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ("name: x\n", "configs: Field required"),
        ("configs: []\n", "configs: List should have at least 1 item"),
        ("configs: [tiny.yaml]\ndeployment: no-slash\n", "deployment: expected FLOW/DEPLOYMENT"),
        ("configs: [tiny.yaml]\ntimeout: 0\n", "timeout: Input should be greater than or equal to 1"),
        ("configs: [{config: tiny.yaml, queue: gpu-0}]\n", "configs.0.queue: unknown field"),
        ("configs: [tiny.yaml, missing.yaml]\n", "configs.1: "),
        ("configs: [bad.yaml]\n", "configs.0: "),
        ("- tiny.yaml\n", "expected a mapping"),
    ],
)
def test_fleet_file_errors_name_the_file_and_the_field(tmp_path, fleet, message):
    tiny_config(tmp_path)
    (tmp_path / "bad.yaml").write_text("train: {batch_size: 0}\n")
    (tmp_path / "fleet.yaml").write_text(fleet)
    with pytest.raises(FleetConfigError, match=f"^{tmp_path / 'fleet.yaml'}: ") as e:
        load_fleet(tmp_path / "fleet.yaml")
    assert message in str(e.value)
    if "bad.yaml" in fleet:  # the run config's own file and field, after the entry
        assert f"configs.0: {tmp_path / 'bad.yaml'}: train.batch_size:" in str(e.value)


def test_the_cli_refuses_a_bad_fleet_file_in_one_line(tmp_path, capsys):
    (tmp_path / "fleet.yaml").write_text("configs: [nowhere.yaml]\n")
    assert main(["fleet", str(tmp_path / "fleet.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrgate: error: ") and "nowhere.yaml: no such config file" in err


def test_the_cli_needs_a_server_for_a_fleet(tmp_path):
    tiny_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "home")  # no profile with an API URL either
    fleet = write_fleet(tmp_path, ["tiny.yaml"])
    out = subprocess.run([str(BIN / "lrgate"), "fleet", str(fleet)], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("lrgate: error: lrgate fleet starts its runs on workers")


def test_rows_of_a_rejected_run_and_a_run_that_never_started(tmp_path):
    run_dir = tmp_path / "run"
    common = {"policy": "manual", "at": "2026-01-01T00:00:00+00:00", "reason": ""}
    suggested = suggestion_record(lr=0.002).to_json()
    decision = {"value": 0.01, "source": "override", "action": "override", "reviewer": "dora", "suggested": suggested}
    (run_dir / "gate-frozen").mkdir(parents=True)
    (run_dir / "gate-frozen" / "decision.json").write_text(json.dumps({"gate": "frozen", **common, **decision}))
    (run_dir / "gate-unfrozen").mkdir()
    rejection = {"value": None, "source": "reject", "action": "reject", "reviewer": "ann", "suggested": None}
    (run_dir / "gate-unfrozen" / "decision.json").write_text(json.dumps({"gate": "unfrozen", **common, **rejection}))
    (run_dir / "gate-unfrozen" / "review.png").write_bytes(b"png")
    rejected = member_row("a.yaml", "fleet-1-a", "Cancelled", "rejected at gate unfrozen by ann: flat", run_dir)
    assert rejected["gate_1"] == "1.00e-02 (override)" and rejected["gate_1_by"] == "override by dora"
    assert rejected["gate_1_suggested"] == "2.00e-03" and rejected["gate_2_suggested"] == "-"
    assert rejected["gate_2"] == "none (reject)" and rejected["gate_2_by"] == "reject by ann"
    assert rejected["gate_1_plot"] == "-" and rejected["gate_2_plot"].endswith("review.png")
    never = member_row("b.yaml", "-", "Error", "could not start the run", tmp_path / "nothing")
    (run_dir / "gate-unfrozen" / "decision.json").write_text(json.dumps({"gate": "unfrozen", "schema_version": 99}))
    newer = member_row("a.yaml", "fleet-1-a", "Completed", "", run_dir)  # a member on a newer lrgate: still a row
    assert newer["gate_1"] == "1.00e-02 (override)" and "unreadable: " in newer["gate_2"] and "newer" in newer["gate_2"]
    assert never["gate_1"] == never["gate_2"] == "-" and never["accuracy"] is None
    finished = {**never, "state": "Completed"}
    assert fleet_outcome([finished, rejected]) == (0, "1 of 2 runs finished, 1 cancelled or rejected")
    assert fleet_outcome([finished, rejected, never]) == (1, "1 of 3 runs failed, 1 cancelled or rejected")
    assert fleet_outcome([finished, finished]) == (0, "all 2 runs finished")
