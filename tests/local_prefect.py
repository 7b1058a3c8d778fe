"""Local Prefect processes for the tests and the load benchmark: a ``prefect server`` on 127.0.0.1, process
workers, each in a process group (session) of its own; start, stop, a free port.

A process worker started here runs its flow runs in sessions of their own, so stopping the worker does not stop a
run in progress: cancel unfinished runs first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(args: Sequence[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """``args`` in a new process group (session), stdout and stderr to ``log``."""
    return subprocess.Popen(
        list(args), cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def start_workers(pool: str, n: int, env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> list:
    """``n`` process workers ``<pool>-<i>`` on ``pool``, one flow run at a time each, logs in ``log_dir``."""
    command = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "1", "--name"]
    return [start_group([*command, f"{pool}-{i}"], log_dir / f"worker-{i}.log", env, cwd) for i in range(n)]


def stop_groups(procs: Sequence[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM to each group, the last started first (workers before their server); SIGKILL after ``timeout``."""
    procs = list(procs)[::-1]
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def start_server(home: Path, env: Mapping[str, str], timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on 127.0.0.1 and a free port, its database and ``server.log`` in ``home``, the UI
    served from the same port; returns the process (a group of its own) and its API URL once ``/health`` answers.
    ``env`` is the environment to start from; any ``PREFECT_API_*`` in it is dropped (the server is not a client).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_API")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_UI_API_URL=url,  # the UI's own calls (default: port 4200)
        PREFECT_UI_URL=url.removesuffix("/api"),
    )
    log = home / "server.log"
    server = start_group(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_groups([server])
                raise RuntimeError(f"prefect server did not become healthy in {timeout:.0f} s: {log}") from None
            time.sleep(0.5)
