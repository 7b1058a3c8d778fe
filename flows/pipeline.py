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

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from lrgate.core.config import load_config
from lrgate.core.errors import Rejected, quiet_run_tracebacks
from lrgate.core.gate_records import Decision, GateRecord, top_lr
from lrgate.core.outputs import write_text
from lrgate.core.run_dir import open_run, run_stamp
from lrgate.flows.gates import gate_decision
from lrgate.operations.promotion import promote
from lrgate.operations.report import metrics_rows, render_report
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

quiet_run_tracebacks()  # lrgate's own errors (a curve, a gate, the data) are logged as one line, no stack
RANGE_TEST_FILES = {"plot", "curve_csv", "frame_csv", "gpu_slot"}  # of each gate's record, in summary.json
STAGES = ("build-learner", "gate-frozen", "train-frozen", "unfreeze", "gate-unfrozen", "fine-tune", "export")


@flow(name="lrgate-pipeline")
def pipeline(config: str, out: str | None = None) -> dict[str, Any]:
    """Train one model through both gates; ``out`` names the run folder (an existing one is resumed).

    Returns a summary: the run folder, both gates' decisions, the metrics and each stage's final state
    (``Completed``, or ``Cached`` for a stage a resumed run did not redo). A rejected gate ends the run
    ``Cancelled``, with the reason in its state message, the report and ``summary.json``; its result is a
    :class:`~lrgate.core.errors.Rejected` error (raised by ``pipeline(...)`` called without ``return_state``).
    """
    logger = get_run_logger()
    cfg = load_config(config)
    data = build_data(cfg)
    run, resumed = open_run(cfg, Path(config), Path(out) if out else default_run_dir(cfg), data["fingerprint"])
    logger.info("%s run %s in %s", "resuming" if resumed else "starting", run.run_id, run.run_dir)
    progress = create_progress_artifact(0.0, key=artifact_key(cfg, "progress"), description=f"run {run.run_id}")
    states: dict[str, str] = {}
    gates: list[tuple[GateRecord, Decision]] = []
    trainings: list[dict[str, Any]] = []

    def stage(name: str, t, *args) -> dict[str, Any]:
        # once a stage ran (was not Cached), the stages after it run too: they start from its new outputs
        redo = any(s != "Cached" for s in states.values())
        state = cached(t, run, name, redo)(cfg, run, *args, return_state=True)
        result = state.result()  # raises, and fails the flow, if the stage failed
        states[name] = state.name
        update_progress_artifact(progress, 100.0 * len(states) / len(STAGES))
        return result

    def gate(name: str, checkpoint: str, gate_cfg, head_lr: float | None = None) -> Decision:
        record = GateRecord.read(
            stage(f"gate-{name}", lr_suggest, checkpoint, name, head_lr), f"gate {name}'s range test"
        )
        decision = gate_decision(cfg, run, record, gate_cfg)
        gates.append((record, decision))
        if not decision.rejected:  # a rejection is said once, by rejected()
            logger.info("gate %s: %s by %s: %s", name, decision.action, decision.reviewer, decision.value)
        return decision

    def finish(outcome: str, model: dict[str, Any] | None, promotion: dict[str, Any] | None = None) -> dict[str, Any]:
        if trainings:
            create_table_artifact(
                metrics_rows(trainings), key=artifact_key(cfg, "metrics"), description=f"run {run.run_id}"
            )
        report = render_report(
            cfg,
            run,
            data=data,
            gates=gates,
            trainings=trainings,
            model=model,
            stage_states=states,
            resumed=resumed,
            outcome=outcome,
            promotion=promotion,
        )
        write_text(run.path("report.md"), report)
        summary = {
            "run_dir": str(run.run_dir),
            "run_id": run.run_id,
            "resumed": resumed,
            "outcome": outcome,
            "decisions": {record.gate: decision.to_json() for record, decision in gates},
            "range_tests": {record.gate: record.to_json(include=RANGE_TEST_FILES) for record, _ in gates},
            "metrics": {t["stage"]: t for t in trainings},
            "model": model["model"] if model else None,
            "report": str(run.path("report.md")),
            "stage_states": states,
            "promotion": promotion,
        }
        write_text(run.path("summary.json"), json.dumps(summary, indent=2))
        logger.info("%s: report %s", outcome, summary["report"])
        return summary

    def rejected(decision: Decision) -> State:
        # The run ends Cancelled, its result the Rejected error (a state's result must be an exception or None:
        # Prefect raises it when reading the result; summary.json and the report hold the summary).
        outcome = f"rejected at gate {decision.gate} by {decision.reviewer}: {decision.reason}"
        finish(outcome, None)
        return Cancelled(message=outcome, data=Rejected(outcome))

    initial = stage("build-learner", build_learner)
    frozen = gate("frozen", initial["checkpoint"], cfg.gates.frozen)
    if frozen.rejected:
        return rejected(frozen)
    trainings.append(stage("train-frozen", train_frozen, initial["checkpoint"], frozen.value))
    unfrozen = stage("unfreeze", unfreeze, trainings[-1]["checkpoint"])
    # gate 2's race spans the lrs around the one the head trained with (race_plan.HEAD_SPAN_DECADES); a body that
    # was never frozen (model.pretrained: false) gives a slice at gate 1: its upper end trained the head
    fine = gate("unfrozen", unfrozen["checkpoint"], cfg.gates.unfrozen, top_lr(frozen.value))
    if fine.rejected:
        return rejected(fine)
    trainings.append(stage("fine-tune", fine_tune, unfrozen["checkpoint"], fine.value))
    model = stage("export", export, trainings[-1]["checkpoint"])
    metric = trainings[-1]["epochs"][-1][cfg.promotion.metric]
    promotion = promote(cfg, run.run_dir, model["model"], metric, run.run_id)
    (logger.info if promotion["promoted"] else logger.warning)("latest model: %s", promotion["why"])
    return finish("finished" if promotion["promoted"] else "finished, not promoted", model, promotion)


def default_run_dir(cfg) -> Path:
    """A new folder per flow run, named from the run's creation time and id: stable across the re-runs of one
    flow run, so a suspended deployment run that resumes (and so re-runs from the top) finds its folder again."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        created = client.read_flow_run(flow_run.id).created
    return cfg.output_dir / f"{cfg.name}-{run_stamp(created, flow_run.id)}"


if __name__ == "__main__":
    pipeline(sys.argv[1], *sys.argv[2:3])
