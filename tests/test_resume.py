"""A run killed mid fine-tune resumes from its last finished stage; a new run of the same config trains afresh.

Runs ``lrgate run`` as a user would, in subprocesses with Prefect's embedded server, and kills one with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import tiny_config

LRGATE = str(Path(sys.executable).parent / "lrgate")
FINISHED_BEFORE_FINE_TUNE = ("build-learner", "gate-frozen", "train-frozen", "unfreeze", "gate-unfrozen")


def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**e, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def lrgate_run(tmp_path: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``lrgate run ARGS`` with its own embedded Prefect server; with ``ok``, it must succeed."""
    out = subprocess.run([LRGATE, "run", *args], capture_output=True, text=True, env=env(tmp_path), timeout=300)
    assert not ok or out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_a_killed_run_resumes_without_redoing_finished_stages(tmp_path):
    config = tiny_config(tmp_path, unfrozen_epochs=12)  # a fine-tune long enough to be killed in
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [LRGATE, "run", str(config), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(tmp_path),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        # decision.json is written once gate 2's stage has finished and its result is persisted
        while not (run / "gate-unfrozen" / "decision.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its fine-tune"
            time.sleep(0.05)
        time.sleep(1.0)  # inside the fine-tune now
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its embedded server: a crash, not a shutdown
        proc.wait()
    assert not (run / "checkpoints/3-fine-tuned.pth").exists() and not (run / "model.pkl").exists()
    kept = {p: p.stat().st_mtime_ns for p in [*run.glob("checkpoints/*.pth"), *run.glob("gate-*/*")]}

    lrgate_run(tmp_path, str(config), "--resume", str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True
    assert {s: summary["stage_states"][s] for s in FINISHED_BEFORE_FINE_TUNE} == dict.fromkeys(
        FINISHED_BEFORE_FINE_TUNE, "Cached"
    )
    assert summary["stage_states"]["fine-tune"] == summary["stage_states"]["export"] == "Completed"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing finished was redone or rewritten
    assert (run / "model.pkl").exists()

    # Next week's run of the same config: a new folder, and every stage trains afresh.
    lrgate_run(tmp_path, str(config))
    (fresh,) = [p for p in (tmp_path / "runs").glob("tiny-2*")]
    states = json.loads((fresh / "summary.json").read_text())["stage_states"]
    assert set(states.values()) == {"Completed"}


def test_resume_refuses_another_config(tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "x", "config_digest": "other", "data_fingerprint": "y"}))
    out = lrgate_run(tmp_path, str(config), "--resume", str(run), ok=False)
    assert out.returncode == 1 and "holds a run of another config" in out.stderr


def test_cli_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: 0}\n")
    out = lrgate_run(tmp_path, str(bad), ok=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"lrgate: error: {bad}: train.batch_size: Input should be greater than or equal to 1"
    assert lrgate_run(tmp_path, str(bad), "--resume", str(tmp_path), ok=False).returncode == 1
