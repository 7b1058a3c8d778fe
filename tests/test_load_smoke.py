"""A 3-run smoke of the load benchmark (benchmarks/load.py) on the session's Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_load_benchmark_runs_its_queued_runs_and_prints_its_figures(prefect_api, tmp_path):
    # The benchmark's own bar is 1 s, a figure its full run reports. A test is no place for a timing claim (here the
    # whole suite shares 2 cores with the server): this one only catches a server that stops answering.
    args = [sys.executable, "-m", "benchmarks.load", "--runs", "3", "--api-url", prefect_api, "--out", str(tmp_path)]
    args += ["--latency-limit", "10"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("runs/minute: ", "orchestration overhead per run", "results: 3 of 3 run folders", "API latency"):
        assert line in out.stdout
    figures = json.loads((tmp_path / "load.json").read_text())
    assert figures["completed"] == figures["with_outputs"] == 3 and figures["runs_per_minute"] > 0
    assert figures["api_calls"] > 0 and 0 <= figures["api_median_s"] <= figures["api_worst_s"] < 10
    for row in figures["rows"]:
        assert 0 < row["model_s"] < row["wall_s"] and row["overhead_s"] > 0
        assert all((Path(row["run_dir"]) / name).is_file() for name in ("summary.json", "report.md", "model.pkl"))
    # Everything it started has stopped: no worker of its pool is left.
    left = subprocess.run(["pgrep", "-f", "worker start --pool lrgate-load"], capture_output=True, text=True)
    assert left.stdout == ""
