"""The fleet: one pipeline run per config, each started through a deployment, so it lands on whichever worker
has room; the fleet waits for all of them and writes one report.

    lrgate fleet configs/fleet.example.yaml          # or: python -m lrgate.flows.fleet FLEET.yaml

The runs start together (one ``arun_deployment`` each, gathered: a thread pool would cap how many wait at
once) and are linked to the fleet's run as subflows. A run that fails, crashes or is rejected at a gate is a row
of the report, never an exception here: the others go on. Each run writes to a folder the fleet names
(``<output_dir>/<config name>-<fleet time>-<fleet id>-<i>``), so the fleet reads every row from its files, and a
retried fleet waits on the runs it started before (an idempotency key per run: never two runs in one folder);
rerun a failed run itself with ``prefect flow-run retry`` (its finished stages come back cached).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Failed

from lrgate.core.errors import LrgateError, quiet_run_tracebacks
from lrgate.core.fleet_config import Fleet, Member, load_fleet
from lrgate.core.outputs import write_text
from lrgate.core.run_dir import run_stamp
from lrgate.operations.fleet_report import fleet_outcome, member_row, render_fleet_report

quiet_run_tracebacks()  # lrgate's own errors are logged as one line, no stack
POLL_SECONDS = 2  # how often the fleet reads its runs' states (Prefect's default: 5)


class FleetError(LrgateError):
    """The fleet cannot start its runs (for example: its deployment is not on the server)."""


async def _run_member(spec: Fleet, member: Member, run_dir: Path, index: int) -> FlowRun:
    """Start one run through the deployment and wait for its final state (or the fleet's timeout)."""
    run = await arun_deployment(
        spec.deployment,
        parameters={"config": str(member.config), "out": str(run_dir)},
        flow_run_name=f"{spec.name}-{index}-{member.run.name}",
        timeout=spec.timeout,
        poll_interval=POLL_SECONDS,
        job_variables=member.job_variables or None,
        work_queue_name=member.work_queue,
        as_subflow=True,
        # A retried fleet waits on the runs it started before (one run per folder), never starts a second one.
        idempotency_key=f"{flow_run.id}-{index}",
    )
    get_run_logger().info("run %s (%s): %s", run.name, member.config, run.state.name if run.state else "no state")
    return run


def _row(spec: Fleet, member: Member, run_dir: Path, run: FlowRun | BaseException) -> dict[str, Any]:
    if isinstance(run, BaseException):
        message = f"could not start or follow the run: {type(run).__name__}: {run}"
        return member_row(str(member.config), "-", "Error", message, run_dir)
    state = run.state
    if state is None or not state.is_final():
        name = state.name if state else "no state"
        message = f"not finished within the fleet's timeout ({spec.timeout} s): still {name}"
        return member_row(str(member.config), run.name, name, message, run_dir)
    return member_row(str(member.config), run.name, state.name, state.message or "", run_dir)


@flow(name="lrgate-fleet")
async def fleet(fleet_file: str) -> dict[str, Any]:
    """Run every config of ``fleet_file`` through the fleet's deployment, wait for all, write the fleet report.

    Returns ``{"folder", "report", "rows", "outcome"}``. When k of the n runs failed (a final state other than
    Completed or Cancelled, or none within the fleet's timeout) the fleet's run ends ``Failed`` with the message
    ``k of n runs failed`` and the same data; the report is written either way.

    Raises
    ------
    FleetConfigError
        The fleet file, or a run config it lists, does not load (nothing has started).
    FleetError
        The deployment is not on the server (nothing has started).
    """
    logger = get_run_logger()
    spec = load_fleet(fleet_file)
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(spec.deployment)
        except ObjectNotFound:
            raise FleetError(
                f"{spec.path}: deployment: {spec.deployment!r} is not deployed on {client.api_url}: deploy it "
                "(prefect deploy --prefect-file deployments/prefect.yaml --all) or name another"
            ) from None
        created = (await client.read_flow_run(flow_run.id)).created
    stamp = run_stamp(created, flow_run.id)
    folder = spec.output_dir / f"{spec.name}-{stamp}"
    run_dirs = [m.run.output_dir / f"{m.run.name}-{stamp}-{i}" for i, m in enumerate(spec.members, 1)]
    logger.info("fleet %s: %d runs through %s; report in %s", spec.name, len(spec.members), spec.deployment, folder)
    runs = await asyncio.gather(
        *(_run_member(spec, m, d, i) for i, (m, d) in enumerate(zip(spec.members, run_dirs, strict=True), 1)),
        return_exceptions=True,
    )
    rows = [_row(spec, m, d, r) for m, d, r in zip(spec.members, run_dirs, runs, strict=True)]
    failed, message = fleet_outcome(rows)
    report = write_text(folder / "fleet.md", render_fleet_report(spec.name, spec.path, str(flow_run.id), rows, folder))
    write_text(folder / "fleet.json", json.dumps(rows, indent=2))
    await acreate_markdown_artifact(report.read_text(), key=f"{spec.name}-fleet", description=f"fleet: {message}")
    await acreate_table_artifact(rows, key=f"{spec.name}-fleet-runs", description=f"fleet: {message}")
    result = {"folder": str(folder), "report": str(report), "rows": rows, "outcome": message}
    (logger.warning if failed else logger.info)("fleet %s: %s; report %s", spec.name, message, report)
    return Failed(message=message, data=result) if failed else result


if __name__ == "__main__":
    asyncio.run(fleet(sys.argv[1]))
