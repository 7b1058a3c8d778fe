"""`lrgate run` and Prefect's temporary server (no PREFECT_API_URL): the server dies, or lrgate is killed outright.

Real parts only: the installed ``lrgate`` console script in a session of its own, its own PREFECT_HOME (so its
temporary server starts on a fresh database, alone), a tiny config that stops at a manual gate 2 (a point
mid-run that holds still however slow the machine is).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import tiny_config

LRGATE = str(Path(sys.executable).parent / "lrgate")
# Gate 2 waits for a reviewer: the run stops there with gate 1, train-frozen and unfreeze done.
WAIT_AT_GATE_2 = "race: off\ngates:\n  unfrozen: {policy: manual, timeout: 900}\n"

pytestmark = pytest.mark.slow


def poll(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """``condition()``'s first truthy value within ``timeout`` seconds; fails saying ``what`` (with the log's
    tail) otherwise, or at once when ``proc`` ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        tail = log.read_text()[-3000:] if log and log.exists() else ""
        assert proc is None or proc.poll() is None, f"lrgate ended ({proc.returncode}) before {what}:\n{tail}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{tail}"
        time.sleep(0.5)


def server_child(pid: int) -> psutil.Process | None:
    """The temporary server (uvicorn) below process ``pid``, if it runs."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "uvicorn" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    return child
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return None
    return None


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def start_run(tmp_path):
    """Start ``lrgate run`` on a tiny config that waits at gate 2; yields (process, run folder, stderr file).
    Whatever it started is stopped afterwards."""
    started: list[tuple[subprocess.Popen, list[psutil.Process]]] = []

    def start() -> tuple[subprocess.Popen, Path, Path]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(
            PREFECT_HOME=str(tmp_path / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            OMP_NUM_THREADS="1",
        )
        config, run_dir = tiny_config(tmp_path, WAIT_AT_GATE_2, name="server-faults"), tmp_path / "run"
        out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        proc = subprocess.Popen(
            [LRGATE, "run", str(config), "--out", str(run_dir)],
            cwd=tmp_path,
            env=env,
            stdout=out.open("w"),
            stderr=err.open("w"),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append((proc, []))
        return proc, run_dir, err

    def remember(proc: subprocess.Popen, server: psutil.Process) -> None:
        for p, servers in started:
            if p is proc:
                servers.append(server)

    start.remember = remember
    yield start
    for proc, servers in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for server in servers:  # re-parented out of the group when lrgate did not take it along
            if not gone(server):
                server.kill()


def test_a_dead_server_ends_the_run_in_one_line_and_keeps_what_finished(start_run):
    proc, run_dir, err = start_run()
    gate_2 = run_dir / "gate-unfrozen" / "suggestion.json"
    poll(gate_2.is_file, 600, "gate 2's suggestion", proc, err)
    server = poll(lambda: server_child(proc.pid), 30, "temporary server", proc, err)
    start_run.remember(proc, server)
    finished = [run_dir / "metrics-train-frozen.json", run_dir / "checkpoints" / "1-frozen.pth", gate_2]
    assert all(f.is_file() for f in finished)

    server.kill()
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lrgate still runs 90 s after its server died:\n{err.read_text()[-3000:]}")

    stderr = err.read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("lrgate: error:")]
    assert code != 0
    assert len(errors) == 1, stderr[-3000:]
    assert "server" in errors[0] and "--resume" in errors[0], errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert all(f.is_file() for f in finished), "a finished stage's file went missing"


def test_kill_9_of_lrgate_takes_its_temporary_server_along(start_run):
    proc, run_dir, err = start_run()
    server = poll(lambda: server_child(proc.pid), 300, "temporary server", proc, err)
    start_run.remember(proc, server)

    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while not gone(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(server), f"the temporary server (pid {server.pid}) outlived lrgate's SIGKILL"
