"""Local Prefect processes (servers, process workers) in process groups of their own: start, stop, a free port.

Used by the load benchmark and the tests that run workers. A process worker started here runs its flow runs in
sessions of their own, so stopping the worker does not stop a run in progress: cancel unfinished runs first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
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
