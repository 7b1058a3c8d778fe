"""The reviewer's side of a manual gate, against the Prefect API in ``PREFECT_API_URL``.

``pending()`` lists runs waiting at a gate; ``answer()`` resumes one with an approval, an override or a rejection.
The server checks the answer against the gate's form; what a schema cannot say (an lr inside the lrs the gate's
range test and race tried, lo <= hi, a reason to reject, the right kind of override for the gate) is checked here
first, and again by the flow. An override is sent as text (the form's typed field), ``repr`` of the float: exact."""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from lrgate.core.errors import LrgateError

FLOW_NAME = "lrgate-pipeline"
GATES = ("unfrozen", "frozen")  # gate 2 first: once it waits, gate 1 is behind the run


class ReviewError(LrgateError):
    """An answer that cannot be given: no such waiting run, a malformed override, or the server's refusal."""


@contextlib.contextmanager
def _client() -> Iterator[Any]:
    """A client of the server in ``PREFECT_API_URL``; a request the server refuses for want of credentials (401,
    403: a shared server's auth string) is a :class:`ReviewError` that says so."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise ReviewError(
            "PREFECT_API_URL is not set: point it at the server the runs use, e.g. http://127.0.0.1:4200/api"
        )
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            yield client
    except PrefectHTTPStatusError as e:
        if e.response.status_code not in (401, 403):
            raise
        given = "a wrong PREFECT_API_AUTH_STRING" if os.environ.get("PREFECT_API_AUTH_STRING") else "no credentials"
        raise ReviewError(
            f"{url} refused the request ({e.response.status_code}) with {given}: set PREFECT_API_AUTH_STRING to the "
            "server's auth string"
        ) from None


def _gate_info(client, run_id: UUID) -> dict[str, Any] | None:
    """What the gate a run waits at published for its reviewers (see ``lrgate.flows.gates``)."""
    import json

    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    for gate in GATES:
        try:
            return json.loads(client.read_flow_run_input(run_id, f"lrgate-gate-{gate}"))
        except ObjectNotFound:
            continue
        except PrefectHTTPStatusError as e:
            if e.response.status_code != 404:
                raise
    return None


def override_bounds(info: dict[str, Any]) -> tuple[float, float] | None:
    """The bounds of an override at a waiting gate, from what its flow published: the lrs its range test and race
    tried (``override_range``, lrgate 0.10 and later), else its range test's (``tested_range``); None if neither."""
    bounds = info.get("override_range") or info.get("tested_range")
    return (float(bounds[0]), float(bounds[1])) if bounds else None


def pending() -> list[dict[str, Any]]:
    """Runs of the lrgate flow that wait at a gate: run id and name, gate, suggestion, the bounds of an override,
    plot path, since when."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with _client() as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
        waiting = []
        for run in runs:
            info = _gate_info(client, run.id) or {}
            s = info.get("suggestion") or {}  # None: the gate's curve could not be read
            waiting.append(
                {
                    "run_id": str(run.id),
                    "name": run.name,
                    "state": run.state.name if run.state else None,
                    "since": run.state.timestamp.isoformat() if run.state else None,
                    "gate": info.get("gate"),
                    "suggestion": s.get("slice") or s.get("lr"),
                    "override_range": list(bounds) if (bounds := override_bounds(info)) else None,
                    "warnings": s.get("warnings", []),
                    "error": info.get("error"),
                    "plot": info.get("plot"),
                    "run_dir": info.get("run_dir"),
                }
            )
    return waiting


def answer(
    run_id: str,
    *,
    lr: float | None = None,
    slice_: tuple[float, float] | None = None,
    reject: str | None = None,
    reviewer: str | None = None,
) -> dict[str, Any]:
    """Resume a waiting run: approve the suggestion, override it (``lr`` or ``slice_``), or ``reject`` (a reason).

    Returns the answer sent. Raises :class:`ReviewError` with the reason when it cannot be given or is refused.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        raise ReviewError(f"{run_id!r} is not a flow run id") from None
    if reviewer is not None and not reviewer.strip():
        raise ReviewError("the reviewer is empty: give a name (--reviewer NAME), or leave it out to answer as yourself")
    reviewer = reviewer or getpass.getuser()
    if reject is not None:
        if not reject.strip():
            raise ReviewError("a rejection needs a reason (--reason)")
        body: dict[str, Any] = {"reviewer": reviewer, "decision": "reject", "reason": reject}
    elif lr is not None or slice_ is not None:
        body = {"reviewer": reviewer, "decision": "override"}
    else:
        body = {"reviewer": reviewer, "decision": "approve"}
    if slice_ is not None and slice_[0] > slice_[1]:
        raise ReviewError(f"a slice needs lo <= hi, got {slice_[0]:g},{slice_[1]:g}")
    if any(v <= 0 for v in (lr, *(slice_ or ())) if v is not None):
        given = f"lr {lr:g}" if lr is not None else f"slice {slice_[0]:g},{slice_[1]:g}"
        raise ReviewError(f"learning rates are positive, got {given}")
    with _client() as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise ReviewError(f"no flow run {run_id} on {os.environ['PREFECT_API_URL']}") from None
        if run.state is None or run.state.type != StateType.PAUSED:
            raise ReviewError(f"run {run_id} is not waiting at a gate (it is {run.state.name if run.state else 'new'})")
        info = _gate_info(client, flow_run_id)
        if info is None:
            raise ReviewError(f"run {run_id} is paused, but not at an lrgate gate")
        suggestion = info["suggestion"]
        takes_slice = info.get("takes_slice", suggestion is not None and suggestion["slice"] is not None)
        if suggestion is None and body["decision"] == "approve":
            raise ReviewError(
                f"gate {info['gate']} has no suggestion to approve (its range test cannot be read: "
                f"{info.get('error')}); override it ({'--slice LO,HI' if takes_slice else '--lr LR'}) or reject it"
            )
        if lr is not None and takes_slice:
            raise ReviewError(f"gate {info['gate']} trains with a slice: use --slice LO,HI")
        if slice_ is not None and not takes_slice:
            raise ReviewError(f"gate {info['gate']} trains with one lr: use --lr")
        given = [lr] if lr is not None else list(slice_ or ())
        bounds = override_bounds(info)
        if given and bounds:  # not published by older runs: the flow checks it either way
            lo, hi = bounds
            for v in given:
                if not lo <= v <= hi:
                    raise ReviewError(
                        f"{v:g} is outside the lrs gate {info['gate']}'s range test and race tried, "
                        f"{lo:.3g} .. {hi:.3g}"
                    )
        if lr is not None:
            body["lr"] = repr(lr)
        if slice_ is not None:
            body["slice_lo"], body["slice_hi"] = repr(slice_[0]), repr(slice_[1])
        response = client.resume_flow_run(flow_run_id, run_input=body)
    if response.status.value != "ACCEPT":
        reason = (response.details.reason or "refused").replace("\n", " ")
        raise ReviewError(f"the server refused the answer: {reason}")
    return {"gate": info["gate"], **body}
