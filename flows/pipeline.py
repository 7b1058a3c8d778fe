"""The main job: one Prefect flow for the whole fastai transfer-learning stage.

    lr-suggest (frozen, gate 1) -> train-frozen(lr) -> unfreeze -> lr-suggest (unfrozen, gate 2) -> fine-tune(slice)

Run it with ``lrgate run CONFIG.yaml``, ``python -m lrgate.flows.pipeline CONFIG.yaml`` or as a Prefect
deployment. With no ``PREFECT_API_URL`` Prefect starts its embedded server, so nothing else is needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lrgate.tasks.stages import (
    artifact_key,
    build_data,
    build_learner,
    cached,
    export,
    fine_tune,
    lr_suggest,
    train_frozen,
    unfreeze,
)
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from lrgate.config import load_config
from lrgate.outputs import write_text
from lrgate.report import metrics_rows, render_report
from lrgate.run_dir import new_run_dir, open_run
from lrgate.stages import decide

STAGES = ("build-learner", "gate-frozen", "train-frozen", "unfreeze", "gate-unfrozen", "fine-tune", "export")


@flow(name="lrgate-pipeline")
def pipeline(config: str, out: str | None = None) -> dict[str, Any]:
    """Train one model through both gates; ``out`` names the run folder (an existing one is resumed).

    Returns a summary: the run folder, both gates' decisions, the metrics and each stage's final state
    (``Completed``, or ``Cached`` for a stage a resumed run did not redo).
    """
    logger = get_run_logger()
    cfg = load_config(config)
    data = build_data(cfg)
    run, resumed = open_run(cfg, Path(config), Path(out) if out else new_run_dir(cfg), data["fingerprint"])
    logger.info("%s run %s in %s", "resuming" if resumed else "starting", run.run_id, run.run_dir)
    progress = create_progress_artifact(0.0, key=artifact_key(cfg, "progress"), description=f"run {run.run_id}")
    states: dict[str, str] = {}

    def stage(name: str, t, *args) -> dict[str, Any]:
        state = cached(t, run, name)(cfg, run, *args, return_state=True)
        result = state.result()  # raises, and fails the flow, if the stage failed
        states[name] = state.name
        update_progress_artifact(progress, 100.0 * len(states) / len(STAGES))
        return result

    initial = stage("build-learner", build_learner)
    gate1 = stage("gate-frozen", lr_suggest, initial["checkpoint"], "frozen")
    lr = decide(gate1, cfg.gates.frozen)
    logger.info("gate 1: training the frozen model with %s (%s)", lr["value"], lr["source"])
    frozen = stage("train-frozen", train_frozen, initial["checkpoint"], lr["value"])
    unfrozen = stage("unfreeze", unfreeze, frozen["checkpoint"])
    gate2 = stage("gate-unfrozen", lr_suggest, unfrozen["checkpoint"], "unfrozen")
    sl = decide(gate2, cfg.gates.unfrozen)
    logger.info("gate 2: fine-tuning with %s (%s)", sl["value"], sl["source"])
    tuned = stage("fine-tune", fine_tune, unfrozen["checkpoint"], sl["value"])
    model = stage("export", export, tuned["checkpoint"])

    trainings = [frozen, tuned]
    create_table_artifact(metrics_rows(trainings), key=artifact_key(cfg, "metrics"), description=f"run {run.run_id}")
    report = render_report(
        cfg,
        run,
        data=data,
        gates=[(gate1, lr), (gate2, sl)],
        trainings=trainings,
        model=model,
        stage_states=states,
        resumed=resumed,
    )
    write_text(run.path("report.md"), report)
    summary = {
        "run_dir": str(run.run_dir),
        "run_id": run.run_id,
        "resumed": resumed,
        "decisions": {"frozen": lr, "unfrozen": sl},
        "metrics": {"train-frozen": frozen, "fine-tune": tuned},
        "model": model["model"],
        "report": str(run.path("report.md")),
        "stage_states": states,
    }
    write_text(run.path("summary.json"), json.dumps(summary, indent=2))
    logger.info("done: report %s, model %s", summary["report"], summary["model"])
    return summary


if __name__ == "__main__":
    pipeline(sys.argv[1], *sys.argv[2:3])
