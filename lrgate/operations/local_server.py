"""The temporary Prefect server of ``lrgate run``: started as a child that dies with lrgate, and watched."""

from __future__ import annotations

import os
import subprocess
import sys


def start_tied_server():
    """Start Prefect's temporary server (the one it starts by itself when ``PREFECT_API_URL`` is not set) now, on
    this thread, as a child that dies with this process, even by SIGKILL; returns it (a
    ``prefect.server.api.server.SubprocessASGIServer``).

    Prefect starts that server with no hook to change how (3.9: ``SubprocessASGIServer._run_uvicorn_command``), and
    a SIGKILL of its process left it running, re-parented to PID 1. This subclass is the one place lrgate changes
    that: the same uvicorn command and environment as Prefect's, started through :mod:`lrgate.core.parent_death`. Its
    instance takes the key Prefect looks the server up by (``SubprocessASGIServer()``, port None), as Prefect's own
    ``prefect_test_harness`` does, so every client in this process uses it. Call it on the main thread: the kernel
    sends PR_SET_PDEATHSIG's signal when the *thread* that started the child ends.
    """
    from prefect.server.api.server import SubprocessASGIServer

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect
            from prefect.settings import get_current_settings

            # As Prefect 3.9.1's own method, wrapped in parent_death.command.
            from lrgate.core.parent_death import command

            uvicorn = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)]
            uvicorn += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
            uvicorn += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
            env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            env = {**os.environ, **env, **get_current_settings().to_environment_variables(exclude_unset=True)}
            return subprocess.Popen(command(os.getpid(), uvicorn), env=env)

    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None and not isinstance(existing, TiedServer) and existing.running:
        return existing  # already started by Prefect in this process (not from the CLI): leave it be
    SubprocessASGIServer._instances.pop(None, None)
    server = TiedServer()
    server.start()
    return server


class ServerWatch:
    """A thread that watches a temporary server (:func:`start_tied_server`) and calls ``on_death(message)`` once
    if its process ends while the watch is on (Prefect's clients would otherwise retry against the dead address
    for many minutes). :meth:`stop` before the server is stopped on purpose."""

    def __init__(self, server, on_death, every: float = 1.0) -> None:
        import threading

        self.server, self.on_death, self.every = server, on_death, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lrgate-server-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        process = self.server.server_process
        while not self._stop.wait(self.every):
            if process is None or process.poll() is None:
                continue
            if not self._stop.is_set():
                self.on_death(
                    f"Prefect's temporary server (pid {process.pid}, {self.server.api_url}) stopped mid-run "
                    f"(exit status {process.returncode}); the run folder keeps the stages that finished: resume "
                    "with lrgate run CONFIG --resume RUN_DIR"
                )
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
