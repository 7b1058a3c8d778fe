"""Prefect tasks, one per pipeline stage: thin wrappers over :mod:`lrgate.stages`, plus the Prefect artifacts.

Each stage's result is persisted in its run folder under a key made of the run id, the config digest, the data
fingerprint and the stage name (:meth:`RunInfo.stage_key`): a resumed run gets its finished stages back as
``Cached``, and a new run (a new id) never does.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lrgate import stages
from lrgate.config import RunConfig
from lrgate.report import format_value
from lrgate.run_dir import RunInfo

RESULTS_DIR = ".prefect-results"


def cached(t: Task, run: RunInfo, stage: str) -> Task:
    """``t`` with its result persisted in the run folder under the stage's key."""
    return t.with_options(
        cache_key_fn=lambda _context, _parameters: run.stage_key(stage),
        persist_result=True,
        result_serializer="json",
        result_storage=run.path(RESULTS_DIR),  # a Path: Prefect stores into it with no saved block
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


def gate_markdown(record: dict[str, Any], title: str) -> str:
    """A gate's review page: the suggestion, the choices table and the plot (embedded, so the UI shows it)."""
    png = base64.b64encode(Path(record["plot"]).read_bytes()).decode()
    s = record["suggestion"]
    value = format_value(s["slice"]) if s["slice"] else f"lr = {format_value(s['lr'])}"
    warnings = "".join(f"\n- {w}" for w in s["warnings"]) or "\n- none"
    return (
        f"# {title}\n\n**Suggestion ({s['state']}, {s['method']}):** `{value}`\n\n"
        f"```\n{record['choices']}\n```\n\n**Warnings:**{warnings}\n\n"
        f"![review plot](data:image/png;base64,{png})\n\n"
        f"Files: `{record['plot']}`, `{record['frame_csv']}`, `{record['curve_csv']}`\n"
    )


@task(name="lr-suggest")
def lr_suggest(cfg: RunConfig, run: RunInfo, checkpoint: str, gate: str) -> dict[str, Any]:
    """The LR range test of one gate: plot, curve data and suggestion in the run folder, and a review artifact."""
    record = stages.range_test(cfg, run, checkpoint, gate, log=get_run_logger().info)
    title = f"Gate {'1' if gate == 'frozen' else '2'} ({gate}) of run {run.run_id}"
    if record["suggestion"] is None:
        create_markdown_artifact(
            f"# {title}\n\nThe range test cannot be read: {record['error']}\n\nCurve: `{record['curve_csv']}`\n",
            key=artifact_key(cfg, f"gate-{gate}"),
            description=f"lrgate review: {title}",
        )
        return record
    create_markdown_artifact(
        gate_markdown(record, title), key=artifact_key(cfg, f"gate-{gate}"), description=f"lrgate review: {title}"
    )
    s = record["suggestion"]
    get_run_logger().info(
        "gate %s: suggested %s (%d warning(s)); plot %s",
        gate,
        s["slice"] or s["lr"],
        len(s["warnings"]),
        record["plot"],
    )
    return record


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
    metrics = stages.train(cfg, run, checkpoint, value, stage, log=get_run_logger().info)
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
