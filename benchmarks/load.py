"""Load: N tiny pipeline runs queued at once on a local Prefect server, run by two process workers.

    python -m benchmarks.load [--runs 20] [--workers 2] [--api-url URL] [--config CONFIG.yaml] [--out DIR]

Starts a ``prefect server`` on a free port (unless ``--api-url`` names a running one), a process work pool
``lrgate-load`` with its workers, deploys the pipeline from this checkout, queues N runs of a tiny config (each
in its own run folder) and waits for them (``--timeout``). Meanwhile it times one API call a second (the flow-run
list that the UI and ``lrgate pending`` read). It prints runs per minute, each run's orchestration overhead (its
wall time in Prefect minus the range tests and fits inside it, as Prefect timed those tasks), whether every run
left its summary, report and model, and the worst API latency; it exits 1 when a run failed, an output is missing
or an API call took a second or more. Whatever it started (server, workers) it stops, always.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.local_prefect import start_server, start_workers, stop_groups

ROOT = Path(__file__).resolve().parents[1]
POOL = "lrgate-load"
MODEL_STAGES = ("lr-suggest", "train-frozen", "fine-tune")  # the range tests and the fits
OUTPUTS = ("summary.json", "report.md", "model.pkl")
LATENCY_LIMIT_S = 1.0


def load_config_copy(config: Path, out: Path) -> Path:
    """The config with its paths resolved and its ``output_dir`` moved into ``out`` (the runs' history and latest
    model stay out of the config's own folder); the demo data is written once here, before any run starts, so
    runs that start together do not each write it."""
    import yaml

    from lrgate.core.config import load_config
    from lrgate.training.stage_functions import load_images

    raw = load_config(config).model_dump(mode="json")
    raw["output_dir"] = str(out / "runs")
    copy = out / "config.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_images(load_config(copy), check=False)
    return copy


class Probe(threading.Thread):
    """Times one API call a second (the deployment's flow-run list) until stopped."""

    def __init__(self, url: str, deployment_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not self.done.wait(1.0):
                t = time.perf_counter()
                try:
                    client.post(f"{self.url}/flow_runs/filter", json=self.body).raise_for_status()
                except httpx.HTTPError:
                    self.latencies.append(float("inf"))  # a failed or timed-out call is a breach, not a gap
                    continue
                self.latencies.append(time.perf_counter() - t)


def _seconds(a, b) -> float | None:
    return (b - a).total_seconds() if a and b else None


def measure(run_ids: list, run_dirs: list[Path]) -> list[dict]:
    """Per run, from the Prefect API: its state; how long it waited for a worker (created until a worker took it:
    Pending) and how long its process took to start (Pending until Running); its wall time (Running until final);
    the time of its model stages (range tests and fits, as Prefect timed those tasks) and the rest (overhead)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    rows = []
    with get_client(sync_client=True) as client:
        for run_id, run_dir in zip(run_ids, run_dirs, strict=True):
            r = client.read_flow_run(run_id)
            taken = next((s.timestamp for s in client.read_flow_run_states(run_id) if s.is_pending()), None)
            tasks = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
            )
            model = sum(
                _seconds(t.start_time, t.end_time) or 0.0 for t in tasks if t.name.rsplit("-", 1)[0] in MODEL_STAGES
            )
            wall = _seconds(r.start_time, r.end_time)
            rows.append(
                {
                    "run": r.name,
                    "state": r.state.name if r.state else "-",
                    "waited_s": _seconds(r.created, taken),
                    "startup_s": _seconds(taken, r.start_time),
                    "wall_s": wall,
                    "model_s": model,
                    "overhead_s": None if wall is None else wall - model,
                    "outputs": all((run_dir / name).is_file() for name in OUTPUTS),
                    "run_dir": str(run_dir),
                }
            )
    return rows


def _stats(values: list[float]) -> str:
    return f"mean {statistics.mean(values):.1f}, median {statistics.median(values):.1f}, max {max(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="how many runs to queue (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="process workers, one flow run each (default 2)")
    parser.add_argument("--api-url", help="a running server's API URL (default: start one on a free port)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "fleet-a.yaml", help="the run config")
    parser.add_argument("--out", type=Path, help="where runs, logs and load.json go (default: a new temp folder)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the runs (default 120 + 60 per run)")
    parser.add_argument(
        "--latency-limit", type=float, default=LATENCY_LIMIT_S, help="worst API call allowed, s (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    out = (args.out or Path(tempfile.mkdtemp(prefix="lrgate-load-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    started: list[subprocess.Popen] = []
    try:
        if args.api_url:
            url = args.api_url
        else:
            try:
                server, url = start_server(out / "prefect-home", env)
            except RuntimeError as e:
                raise SystemExit(str(e)) from None
            started.append(server)
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = url  # before Prefect is imported here
        return run_load(args, out, url, env, started)
    finally:
        stop_groups(started)


def run_load(args: argparse.Namespace, out: Path, url: str, env: dict[str, str], started: list) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled, Cancelling

    from lrgate.flows.pipeline import pipeline

    config = load_config_copy(args.config, out)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    deployment_id = pipeline.from_source(str(ROOT), "flows/pipeline.py:pipeline").deploy(
        name="load", work_pool_name=POOL, print_next_steps=False, ignore_warnings=True
    )
    # A worker's runs share the machine: each gets its part of the cores (torch would take them all).
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", threads)}
    started += start_workers(POOL, args.workers, worker_env, out, cwd=ROOT)
    probe = Probe(url, str(deployment_id))
    probe.start()
    t0 = time.monotonic()
    run_dirs = [out / "runs" / f"run-{i:02d}" for i in range(1, args.runs + 1)]
    run_ids = [
        run_deployment(
            "lrgate-pipeline/load", parameters={"config": str(config), "out": str(d)}, timeout=0, as_subflow=False
        ).id
        for d in run_dirs
    ]
    print(f"queued {args.runs} runs on {url} for {args.workers} workers ({threads} torch thread(s) each)")
    deadline = t0 + (args.timeout or 120 + 60 * args.runs)
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(i).state for i in run_ids]
            done = sum(s is not None and s.is_final() for s in states)
            if done == len(run_ids) or time.monotonic() > deadline:
                break
            time.sleep(2)
        # Out of time: cancel what is left, so no run trains on (or waits in the queue) after the workers stop.
        for run_id, state in zip(run_ids, states, strict=True):
            if state is None or not state.is_final():
                # a running one is stopped by its worker (Cancelling); a queued one never starts (Cancelled)
                end = Cancelling if state is not None and state.is_running() else Cancelled
                client.set_flow_run_state(run_id, end(message="load benchmark: out of time"), force=True)
    elapsed = time.monotonic() - t0
    probe.done.set()
    probe.join()
    rows = measure(run_ids, run_dirs)
    completed = [r for r in rows if r["state"] == "Completed"]
    with_outputs = sum(r["outputs"] for r in rows)
    worst = max(probe.latencies, default=float("nan"))
    figures = {
        "runs": args.runs,
        "workers": args.workers,
        "completed": len(completed),
        "with_outputs": with_outputs,
        "elapsed_s": round(elapsed, 1),
        "runs_per_minute": round(len(completed) / elapsed * 60, 2),
        "api_calls": len(probe.latencies),
        "api_worst_s": round(worst, 3),
        "api_median_s": round(statistics.median(probe.latencies), 3) if probe.latencies else None,
        "api_latencies_s": [round(t, 3) for t in probe.latencies],
        "rows": rows,
    }
    (out / "load.json").write_text(json.dumps(figures, indent=2))

    columns = {"waited_s": "waited s", "startup_s": "start-up s", "wall_s": "wall s", "model_s": "model s"}
    columns["overhead_s"] = "overhead s"
    print(f"\n{'run':<24}{'state':<11}" + "".join(f"{title:>12}" for title in columns.values()) + "  outputs")
    for r in rows:
        cells = "".join(f"{'-':>12}" if r[k] is None else f"{r[k]:>12.1f}" for k in columns)
        print(f"{r['run']:<24}{r['state']:<11}{cells}  {'yes' if r['outputs'] else 'MISSING'}")
    print(f"\nruns/minute: {figures['runs_per_minute']} ({len(completed)} of {args.runs} completed in {elapsed:.0f} s)")
    if completed:
        print(
            f"orchestration overhead per run, s (wall minus range tests and fits): "
            f"{_stats([r['overhead_s'] for r in completed])}"
        )
        print(
            f"process start per run, s (taken by a worker until its flow runs: a fresh Python, imports): "
            f"{_stats([r['startup_s'] for r in completed])}"
        )
    print(f"results: {with_outputs} of {args.runs} run folders hold {', '.join(OUTPUTS)}")
    print(
        f"API latency: worst {worst:.3f} s, median {figures['api_median_s']} s over {len(probe.latencies)} calls "
        f"during the load ({'under' if worst < args.latency_limit else 'NOT under'} {args.latency_limit:g} s)"
    )
    print(f"figures: {out / 'load.json'}")
    ok = len(completed) == with_outputs == args.runs and worst < args.latency_limit
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
