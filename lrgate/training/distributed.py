"""Multi-GPU training in one run: a training stage as one ``torchrun`` launch of N ranks (the launcher side).

The flow stays one process. The range tests and the gates run in it, between launches: ``lr_find`` deadlocks
under fastai's distributed context, and a gate that waits for a person must not hold N processes (or N GPUs).
Each training stage (train-frozen, fine-tune) is handed to::

    python -m torch.distributed.run --standalone --nproc_per_node N -m lrgate.training.distributed_train ...

with the config, the run folder, the input checkpoint and the gate's lr or slice as arguments; every rank trains
with that one value under ``learn.distrib_ctx`` (:mod:`lrgate.training.distributed_train`). The launch works in its own
folder, ``launch-<stage>/`` in the run folder: the config it was given, one ``rank-<r>.json`` per rank (what
that rank trained with and how it went), ``stderr.log`` and rank 0's checkpoint. Only once every rank has
exited cleanly is that checkpoint moved to its place under ``checkpoints/``, so a failed launch never leaves a
checkpoint a later stage (or a resumed run) could take for finished.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from lrgate.core import parent_death
from lrgate.core.config import RunConfig
from lrgate.core.errors import LrgateError
from lrgate.core.outputs import write_text
from lrgate.core.run_dir import RunInfo

RANK_MODULE = "lrgate.training.distributed_train"
STAGED_CHECKPOINT = "checkpoint.pth"
STDERR_TAIL_LINES = 30
STOP_GRACE_S = 30  # how long an interrupted launch gets to stop its ranks before it is killed
Log = Callable[[str], object]


class DistributedError(LrgateError):
    """A distributed launch that cannot start (backend, GPUs) or whose ranks failed (the message has their stderr)."""


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` is nccl on CUDA and gloo on the CPU; nccl on the CPU is an error."""
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if backend == "nccl" and device != "cuda":
        raise DistributedError(
            f"distributed.backend: nccl needs CUDA GPUs, and this run trains on the {device}: use gloo or auto"
        )
    return backend


def check_gpus(processes: int, device: str, gpus: int) -> None:
    """One rank per GPU: asking for more ranks than the machine has GPUs is an error."""
    if device == "cuda" and processes > gpus:
        raise DistributedError(
            f"distributed.processes: {processes} processes need {processes} GPUs, and torch sees {gpus} here"
        )


def value_args(value: float | list[float]) -> list[str]:
    """The lr (``--lr X``) or slice (``--slice LO HI``) as arguments; ``repr`` gives the float back exactly."""
    if isinstance(value, list):
        return ["--slice", *map(repr, map(float, value))]
    return ["--lr", repr(float(value))]


def launch_command(processes: int, args: list[str]) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``, so no PATH is needed) of the rank module."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on a free local port: launches of other runs never clash
        "--nproc_per_node",
        str(processes),
        "-m",
        RANK_MODULE,
        *args,
    ]


def launch_training(
    cfg: RunConfig,
    run: RunInfo,
    checkpoint: str,
    value: float | list[float],
    stage: str,
    out_checkpoint: Path,
    *,
    device: str,
    log: Log = print,
) -> dict[str, Any]:
    """Train ``stage`` on ``cfg.distributed.processes`` ranks; return rank 0's record of the fit.

    Every rank trains from ``checkpoint`` with ``value`` (an lr, or a slice as ``[lo, hi]``); rank 0's weights
    are moved to ``out_checkpoint`` once all ranks have exited cleanly. Rank 0's progress lines go to ``log``.

    Raises
    ------
    DistributedError
        The backend or the GPU count does not fit this machine, or the launch exited non-zero (the message
        ends with the tail of the ranks' stderr; nothing is written to ``out_checkpoint`` then).
    """
    processes = cfg.distributed.processes
    backend = resolve_backend(cfg.distributed.backend, device)
    check_gpus(processes, device, torch.cuda.device_count() if device == "cuda" else 0)
    folder = run.path(f"launch-{stage}")
    shutil.rmtree(folder, ignore_errors=True)  # a retried stage starts clean: no rank file of an earlier try
    config = write_text(folder / "config.json", cfg.model_dump_json(indent=2))
    args = [
        *("--config", str(config), "--run-dir", str(run.run_dir), "--stage", stage, "--checkpoint", checkpoint),
        *value_args(value),
        *("--backend", backend, "--out", str(folder)),
    ]
    if device == "cuda":
        gc.collect()  # rank 0 shares GPU 0 with this process: give back what the range test's Learner cached
        torch.cuda.empty_cache()
    log(f"{stage}: {processes} processes ({backend}): python {' '.join(launch_command(processes, args)[1:])}")
    code, tail = _run(launch_command(processes, args), folder / "stderr.log", log)
    if code != 0:
        raise DistributedError(
            f"{stage}: the distributed launch of {processes} processes failed (exit {code}); "
            f"the ranks' stderr ({folder / 'stderr.log'}) ends:\n{tail}"
        )
    rank0 = json.loads((folder / "rank-0.json").read_text())
    out_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder / STAGED_CHECKPOINT, out_checkpoint)  # rank 0 wrote it whole; same filesystem: atomic
    return {k: v for k, v in rank0.items() if k not in ("rank", "world_size", "backend")}


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (children, their children, ...); none when ``pid`` is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _run(command: list[str], stderr_path: Path, log: Log) -> tuple[int, str]:
    """Run ``command``, its stdout lines to ``log`` and its stderr to a file; return the exit code and the
    stderr's last lines. The launch stays in this process group, so a Ctrl-C or a kill of the group reaches it;
    if this process is interrupted it stops the launch (torchrun stops its ranks; a launch still there after
    ``STOP_GRACE_S`` is killed with every process below it) before going on, and if it is
    killed outright (SIGKILL, the OOM killer) the kernel sends the launch SIGTERM (:mod:`lrgate.core.parent_death`).
    That signal follows the *thread* that started the launch: call this from one that outlives it (it waits for
    the launch before it returns: the flow's own thread, as the training stages do)."""
    with stderr_path.open("w") as stderr:
        # (through parent_death: if this process is killed outright, torchrun gets SIGTERM and stops its ranks)
        wrapped = parent_death.command(os.getpid(), command)
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                log(line.rstrip())
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (a cancelled flow run, Ctrl-C): leave no orphaned ranks
                proc.terminate()  # torchrun passes it to its ranks ...
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:  # ... unless a rank hangs: then no more waiting, for any of them
                    ranks = descendants(proc.pid)  # (found before the launcher dies and they are re-parented)
                    proc.kill()
                    for pid in ranks:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    proc.wait()
    with stderr_path.open() as f:
        tail = "".join(collections.deque(f, maxlen=STDERR_TAIL_LINES))
    return code, tail
