"""Prefect tasks, one per pipeline stage: thin wrappers over :mod:`lrgate.training.stage_functions`, plus the
Prefect artifacts.

Each stage's result is persisted in its run folder under a key made of the run id, the config digest, the data
fingerprint and the stage name (:meth:`RunInfo.stage_key`): a resumed run gets its finished stages back as
``Cached``, and a new run (a new id) never does.

The stages that run batches through the model (both range tests and both fits) each hold one slot of the global
concurrency limit named in ``LRGATE_GPU_LIMIT`` while they run (:func:`gpu_slot`), and only then: a gate's wait
holds nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import task_run
from prefect.serializers import JSONSerializer

from lrgate.core.config import RunConfig
from lrgate.core.errors import LrgateError
from lrgate.core.run_dir import RunInfo, changed_files, read_stage_record
from lrgate.operations.report import gate_markdown
from lrgate.training import stage_functions as stages

RESULTS_DIR = ".prefect-results"
GPU_LIMIT_ENV = "LRGATE_GPU_LIMIT"


class GpuLimitError(LrgateError):
    """``LRGATE_GPU_LIMIT`` names a global concurrency limit that the server cannot hand a slot of."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def gpu_slot(stage: str) -> Iterator[dict[str, Any] | None]:
    """Hold one slot of the global concurrency limit named in ``LRGATE_GPU_LIMIT`` for the block.

    Yields ``{"limit", "waited_s", "held_from"}`` (``held_to`` is added on the way out), or None when the
    variable is unset: then no limit is taken (a standalone ``lrgate run`` needs none). The limit is taken with
    ``strict=True``: a name the server does not know raises :class:`GpuLimitError` instead of running unlimited.
    The wait has no timeout (a training waits for the ones before it); the slot's lease is renewed while held,
    and if renewal fails the stage stops rather than go on unguarded (Prefect's rule for strict limits).

    Raises
    ------
    GpuLimitError
        The limit does not exist on the server, or the server could not be asked.
    """
    limit = os.environ.get(GPU_LIMIT_ENV)
    if not limit:
        yield None
        return
    # "gpu-h-0,gpu-h-1": a slot of each (a distributed run's worker, whose launch uses both GPUs)
    names = [name.strip() for name in limit.split(",") if name.strip()]
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run.id) if task_run.id else None
    asked = time.perf_counter()
    with contextlib.ExitStack() as held:
        try:
            # strict=True refuses a list only when none of it exists: check each name first
            with get_client(sync_client=True) as client:
                for name in names:
                    client.read_global_concurrency_limit_by_name(name)
            held.enter_context(concurrency(names, occupy=1, strict=True, holder=holder))
        except (ConcurrencySlotAcquisitionError, ObjectNotFound) as e:
            raise GpuLimitError(
                f"{stage}: {GPU_LIMIT_ENV}={limit!r}: the server has no such global concurrency limit, or cannot "
                f"hand out its slots ({e}); create it (prefect gcl create NAME --limit 1 for each name), or unset "
                f"{GPU_LIMIT_ENV} to train without one"
            ) from None
        slot = {"limit": limit, "waited_s": round(time.perf_counter() - asked, 2), "held_from": _now()}
        if slot["waited_s"] >= 1:
            get_run_logger().info("%s: waited %.0f s for a slot of %s", stage, slot["waited_s"], limit)
        yield slot
        slot["held_to"] = _now()


def cached(t: Task, run: RunInfo, stage: str, redo: bool = False) -> Task:
    """``t`` with its result persisted in the run folder under the stage's key; with ``redo``, run again anyway.

    A record already there is read by lrgate before Prefect sees it (:func:`read_stage_record`: one that is not
    lrgate's own JSON stops the run), and the stage is redone, with a warning, when a file it wrote has changed
    since (:func:`changed_files`). A redone stage overwrites its record (Prefect's ``refresh_cache``).

    Raises
    ------
    RunDirError
        The stage's record is not one that lrgate wrote.
    """
    result = read_stage_record(run.path(RESULTS_DIR) / run.stage_key(stage), run)
    changed = changed_files(result) if result is not None and not redo else []
    if changed:
        get_run_logger().warning("%s: %s changed since the stage wrote it: redoing the stage", stage, changed[0])
    return t.with_options(
        cache_key_fn=lambda _context, _parameters: run.stage_key(stage),
        persist_result=True,
        result_serializer=JSONSerializer(object_encoder=None, object_decoder=None),  # run_dir.STAGE_SERIALIZER
        result_storage=run.path(RESULTS_DIR),  # a Path: Prefect stores into it with no saved block
        refresh_cache=True if redo or changed else None,
    )


def artifact_key(cfg: RunConfig, what: str) -> str:
    """Artifact keys must match ``^[a-z0-9-]*$``; the config name already does."""
    return f"{cfg.name}-{what}"


@task(name="build-data")
def build_data(cfg: RunConfig) -> dict[str, Any]:
    """List and check every image (a corrupt one fails here, before any training) and fingerprint them."""
    images = stages.load_images(cfg, check=True)
    get_run_logger().info("data: %d images, %d classes, under %s", len(images.items), len(images.classes), images.root)
    return {
        "images": len(images.items),
        "classes": images.classes,
        "root": str(images.root),
        "fingerprint": images.fingerprint,
    }


@task(name="build-learner")
def build_learner(cfg: RunConfig, run: RunInfo) -> dict[str, Any]:
    result = stages.build_initial(cfg, run, log=get_run_logger().info)
    get_run_logger().info(
        "learner: %s body, %d parameter groups, %s, on %s in %s",
        cfg.model.arch,
        result["n_groups"],
        result["state"],
        result["device"],
        result["precision"],
    )
    return result


@task(name="lr-suggest")
def lr_suggest(
    cfg: RunConfig, run: RunInfo, checkpoint: str, gate: str, head_lr: float | None = None
) -> dict[str, Any]:
    """The LR range test of one gate: plot, curve data and suggestion in the run folder, and a review artifact.
    Returns the gate's record (:class:`~lrgate.core.gate_records.GateRecord`) as its JSON object: what Prefect
    persists and a resumed run reads back; the flow reads it into the record.

    It holds a GPU slot (:func:`gpu_slot`) for the test itself, which runs as many batches as a short fit; the
    slot is released before the gate decides, so a gate waiting for a reviewer never holds it. After unfreeze,
    ``head_lr`` (what the frozen stage trained with) centres the race's candidates.
    """
    with gpu_slot(f"lr-suggest {gate}") as slot:
        record = stages.range_test(cfg, run, checkpoint, gate, log=get_run_logger().info, head_lr=head_lr)
    title = f"Gate {'1' if gate == 'frozen' else '2'} ({gate}) of run {run.run_id}"
    artifact = create_markdown_artifact(
        gate_markdown(record, title), key=artifact_key(cfg, f"gate-{gate}"), description=f"lrgate review: {title}"
    )
    # the gate's form links to the artifact: the same page, full width
    record = record.model_copy(update={"gpu_slot": slot, "artifact_id": str(artifact)})
    if record.suggestion is not None:
        get_run_logger().info(
            "gate %s: suggested %s (%d warning(s)); plot %s",
            gate,
            record.value,
            len(record.suggestion.warnings),
            record.plot,
        )
    return record.to_json()


@task(name="train-frozen")
def train_frozen(cfg: RunConfig, run: RunInfo, checkpoint: str, lr: float) -> dict[str, Any]:
    return _train(cfg, run, checkpoint, lr, "train-frozen")


@task(name="unfreeze")
def unfreeze(cfg: RunConfig, run: RunInfo, checkpoint: str) -> dict[str, Any]:
    result = stages.unfreeze(cfg, run, checkpoint)
    get_run_logger().info("unfreeze: now %s (%d frozen groups)", result["state"], result["frozen_groups"])
    return result


@task(name="fine-tune")
def fine_tune(cfg: RunConfig, run: RunInfo, checkpoint: str, value: float | list[float]) -> dict[str, Any]:
    return _train(cfg, run, checkpoint, value, "fine-tune")


def _train(cfg: RunConfig, run: RunInfo, checkpoint: str, value: float | list[float], stage: str) -> dict[str, Any]:
    """The stage's fit inside a GPU slot; its metrics gain the wall-clock ``started`` and ``ended`` of the fit (UTC)
    and ``gpu_slot`` (the limit, the wait and the hold: :func:`gpu_slot`; None without a limit)."""
    with gpu_slot(stage) as slot:
        started = _now()
        logger = get_run_logger()
        metrics = stages.train(cfg, run, checkpoint, value, stage, log=logger.info, warn=logger.warning)
        metrics = {**metrics, "started": started, "ended": _now()}
    metrics["gpu_slot"] = slot
    last = metrics["epochs"][-1]
    get_run_logger().info(
        "%s with %s: %s after %d epoch(s), %.0f s, %.0f images/s",
        stage,
        value,
        ", ".join(f"{k} {v:.4f}" for k, v in last.items() if v is not None),
        len(metrics["epochs"]),
        metrics["seconds"],
        metrics["images_per_s"] or 0,
    )
    return metrics


@task(name="export")
def export(cfg: RunConfig, run: RunInfo, checkpoint: str) -> dict[str, Any]:
    result = stages.export(cfg, run, checkpoint)
    get_run_logger().info("exported %s", result["model"])
    return result
