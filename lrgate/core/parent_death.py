"""Start a command that ends when the process that started it dies, even by SIGKILL (Linux).

    python -m lrgate.core.parent_death PARENT_PID -- COMMAND [ARG ...]

asks the kernel to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then becomes
COMMAND (``exec``: same process, so the request holds for COMMAND). A flow run that is killed outright therefore
takes its ``torchrun`` launch with it (torchrun passes the SIGTERM to its ranks) instead of leaving N ranks
training on its GPUs. ``PARENT_PID`` closes the race where the parent dies before the request is made. On other
systems the command is started as it is.

The request is made here, after the fork, rather than in ``subprocess.Popen(preexec_fn=...)``, which is unsafe in a
process with threads (the Prefect engine has several). Each rank makes it too (:func:`arm`, in
:mod:`lrgate.training.distributed_train`): torchrun starts its ranks in sessions of their own, so if torchrun itself is
killed outright nothing else would stop them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def command(parent_pid: int, args: list[str]) -> list[str]:
    """``args`` wrapped so that it ends with ``parent_pid``."""
    return [sys.executable, "-m", "lrgate.core.parent_death", str(parent_pid), "--", *args]


def arm(parent_pid: int) -> bool:
    """Ask for SIGTERM when this process's parent dies (Linux; elsewhere nothing happens). Returns False when
    ``parent_pid`` is already gone (this process was re-parented before the request: it would never fire)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        return os.getppid() == parent_pid
    return True


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        raise SystemExit("usage: python -m lrgate.core.parent_death PARENT_PID -- COMMAND [ARG ...]")
    parent, args = int(argv[0]), argv[2:]
    if not arm(parent):
        raise SystemExit(f"lrgate.core.parent_death: parent {parent} is gone; not starting {args[0]}")
    os.execvp(args[0], args)


if __name__ == "__main__":
    main(sys.argv[1:])
