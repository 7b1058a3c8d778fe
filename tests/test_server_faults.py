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
WAIT_AT_GATE_2 = "gates:\n  unfrozen: {policy: manual, timeout: 900}\n"


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
def start_run(starts_processes, tmp_path):
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
        config, run_dir = tiny_config(tmp_path, WAIT_AT_GATE_2), tmp_path / "run"
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


# A shared server: the UI on a port other than 4200, and basic auth (README: "A server on another port, shared").
AUTH = "reviewer:s3cret"


@pytest.fixture(scope="module")
def shared_server(starts_processes, tmp_path_factory):
    """``prefect server start`` as README tells it for a shared server: the port from PREFECT_SERVER_API_PORT
    (so the UI's own calls go there too) and PREFECT_SERVER_API_AUTH_STRING. Yields (API URL, environment of a
    client that has nothing of Prefect's but a home of its own)."""
    import urllib.request

    from tests.local_prefect import free_port, start_group, stop_groups

    home = tmp_path_factory.mktemp("shared-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    env = dict(clean, PREFECT_HOME=str(home / "server"), PREFECT_SERVER_API_PORT=str(port))
    env.update(PREFECT_SERVER_API_AUTH_STRING=AUTH, PREFECT_SERVER_UI_ENABLED="true")
    prefect = str(Path(sys.executable).parent / "prefect")
    server = start_group([prefect, "server", "start", "--host", "127.0.0.1"], home / "server.log", env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):  # health needs no auth
                    break
            except OSError:
                assert server.poll() is None, (home / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "prefect server did not become healthy in 120 s"
                time.sleep(0.5)
        yield url, dict(clean, PREFECT_HOME=str(home / "client"))
    finally:
        stop_groups([server])


def test_the_ui_of_a_server_on_another_port_calls_that_port(shared_server):
    import json
    import urllib.request

    url, _ = shared_server
    with urllib.request.urlopen(url.removesuffix("/api") + "/ui-settings", timeout=10) as r:
        assert json.load(r)["api_url"] == url


def test_a_shared_server_refuses_a_client_without_its_auth_string_and_approve_works_with_it(shared_server, tmp_path):
    import json

    url, clean = shared_server
    without = dict(clean, PREFECT_API_URL=url)
    with_auth = dict(without, PREFECT_API_AUTH_STRING=AUTH)

    refused = subprocess.run([LRGATE, "pending"], env=without, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"lrgate: error: {url} refused the request (401) with no credentials: set PREFECT_API_AUTH_STRING to the "
        "server's auth string"
    ], refused.stderr[-2000:]

    config = tiny_config(tmp_path, "gates:\n  frozen: {policy: manual, timeout: 900}\n")
    err = tmp_path / "stderr.txt"
    run = subprocess.Popen(
        [LRGATE, "run", str(config), "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=with_auth,
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
        start_new_session=True,
    )
    try:

        def waiting() -> list:
            out = subprocess.run([LRGATE, "pending", "--json"], env=with_auth, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-2000:]
            return json.loads(out.stdout)

        runs = poll(waiting, 600, "run waiting at gate 1", run, err)
        run_id = runs[0]["run_id"]
        denied = subprocess.run([LRGATE, "approve", run_id], env=without, capture_output=True, text=True)
        assert denied.returncode == 1 and "refused the request (401)" in denied.stderr, denied.stderr[-2000:]
        assert "Traceback" not in denied.stderr
        approved = subprocess.run([LRGATE, "approve", run_id], env=with_auth, capture_output=True, text=True)
        assert approved.returncode == 0, approved.stderr[-2000:]
        stdout, _ = run.communicate(timeout=600)
        assert run.returncode == 0, err.read_text()[-3000:]
        assert "gate frozen" in stdout and "approve by" in stdout, stdout
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
