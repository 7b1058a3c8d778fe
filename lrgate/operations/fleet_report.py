"""The fleet report: one row per run of a fleet, read from the run's folder, and the page that lists them.

A row holds what a reviewer asks of each run: its config, its final state, each gate's suggestion, the value it
went on with and who decided it, the accuracy after fine-tune and the two gate plots. It is read from the files
the pipeline writes as it goes (``gate-<name>/decision.json``, ``metrics-fine-tune.json``, ``summary.json``), so
a run that failed or was rejected half-way still shows whatever it got to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lrgate.core.gate_records import Decision, RecordError, format_value
from lrgate.operations.report import markdown_table

GATES = ((1, "frozen"), (2, "unfrozen"))
COLUMNS = {
    "config": "config",
    "run": "run",
    "state": "state",
    "gate_1_suggested": "gate 1 suggested",
    "gate_1": "gate 1",
    "gate_1_by": "gate 1 by",
    "gate_2_suggested": "gate 2 suggested",
    "gate_2": "gate 2",
    "gate_2_by": "gate 2 by",
    "accuracy": "accuracy",
    "gate_1_plot": "gate 1 plot",
    "gate_2_plot": "gate 2 plot",
    "run_dir": "run folder",
    "message": "message",
}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def member_row(config: str, run: str, state: str, message: str, run_dir: Path) -> dict[str, Any]:
    """The row of one run: ``state`` is its final Prefect state's name, ``message`` what to say beside it
    (replaced by the run's own outcome once its ``summary.json`` exists); the rest is read from ``run_dir``.
    Missing files (a run that stopped early, or never started) leave ``-`` and an accuracy of None."""
    row: dict[str, Any] = {key: "-" for key in COLUMNS}
    row.update(config=config, run=run, state=state, accuracy=None, run_dir=str(run_dir), message=message or "-")
    for n, gate in GATES:
        path = run_dir / f"gate-{gate}" / "decision.json"
        saved = _read_json(path)
        try:
            decision = None if saved is None else Decision.read(saved, str(path))
        except RecordError as e:  # one member's unreadable file never costs the fleet its report
            row[f"gate_{n}"] = f"unreadable: {e}"
            decision = None
        if decision is not None:
            if decision.suggested is not None:
                row[f"gate_{n}_suggested"] = format_value(decision.suggested.value)
            row[f"gate_{n}"] = f"{format_value(decision.value)} ({decision.source})"
            row[f"gate_{n}_by"] = f"{decision.action} by {decision.reviewer}"
        plot = run_dir / f"gate-{gate}" / "review.png"
        if plot.is_file():
            row[f"gate_{n}_plot"] = str(plot)
    metrics = _read_json(run_dir / "metrics-fine-tune.json")
    if metrics is not None and metrics["epochs"][-1].get("accuracy") is not None:
        row["accuracy"] = round(metrics["epochs"][-1]["accuracy"], 4)
    summary = _read_json(run_dir / "summary.json")
    if summary is not None:
        row["message"] = summary["outcome"]
    return row


def fleet_outcome(rows: list[dict[str, Any]]) -> tuple[int, str]:
    """How many runs failed (any final state but Completed and Cancelled, or no final state at all), and the
    fleet's state message: ``k of n runs failed``, with the cancelled (rejected) runs beside it."""
    n = len(rows)
    failed = sum(r["state"] not in ("Completed", "Cancelled") for r in rows)
    cancelled = sum(r["state"] == "Cancelled" for r in rows)
    if failed:
        text = f"{failed} of {n} runs failed"
    elif cancelled:
        text = f"{n - cancelled} of {n} runs finished"
    else:
        text = f"all {n} runs finished"
    return failed, text + (f", {cancelled} cancelled or rejected" if cancelled else "")


def _cell(key: str, value: Any, folder: Path) -> str:
    if value is None:
        return "-"
    if key.endswith("_plot") and value != "-":
        return f"[plot]({os.path.relpath(value, folder)})"
    return str(value)


def render_fleet_report(name: str, fleet_file: Path, run_id: str, rows: list[dict[str, Any]], folder: Path) -> str:
    """The fleet's markdown page (plot links relative to ``folder``, where the page is written)."""
    lines = [
        f"# lrgate fleet `{name}`: {fleet_outcome(rows)[1]}",
        "",
        f"- fleet file: `{fleet_file}`",
        f"- fleet run: `{run_id}`",
        "",
        *markdown_table(list(COLUMNS.values()), ([_cell(k, r[k], folder) for k in COLUMNS] for r in rows)),
    ]
    return "\n".join(lines) + "\n"
