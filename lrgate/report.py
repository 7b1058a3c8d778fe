"""The run report: one markdown page a reviewer reads top to bottom (written last, atomically)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from lrgate.config import RunConfig
from lrgate.run_dir import RunInfo


def format_value(v: float | list[float] | None) -> str:
    """An lr (``1.2e-03``), a slice (``slice(1.0e-05, 1.0e-03)``) or ``none``, as reports and artifacts show it."""
    if v is None:
        return "none"
    return f"slice({v[0]:.2e}, {v[1]:.2e})" if isinstance(v, list) else f"{v:.2e}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines; cells are shown with ``str`` (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def race_markdown(race: dict[str, Any], compact: bool = False) -> list[str]:
    """A race record (``Race.to_dict``) as markdown lines: its trials, the curve rules, its cost. The trials are a
    table, or with ``compact`` one line each (a page as narrow as Prefect's Resume form scrolls a wide table)."""
    score = race["score"]
    last_rung = max(t["rung"] for t in race["trials"])
    rows = []
    for t in race["trials"]:
        won = t["lr"] == race["winner"] and t["rung"] == last_rung
        loss = "diverged" if t["valid_loss"] is None else f"{t['valid_loss']:.4g}"
        metric = "" if t["metric"] is None else f"{t['metric']:.4g}"
        lr = f"**{t['lr']:.2e} (winner)**" if won else f"{t['lr']:.2e}"
        rows.append([t["rung"], lr, t["iterations"], loss, *([metric] if score != "valid_loss" else [])])
    header = ["rung", "lr" if race["slice_ratio"] is None else "slice hi", "iterations", "valid_loss"]
    header += [score] if score != "valid_loss" else []
    if compact:
        trials = [
            f"- rung {r[0]}: {header[1]} {r[1]}, {r[2]} iterations: "
            + ", ".join(f"{h} {v}" for h, v in zip(header[3:], r[3:], strict=True))
            for r in rows
        ]
    else:
        trials = markdown_table(header, rows)
    cost = race["cost"]
    ratio = "" if race["slice_ratio"] is None else f" Slices keep the curve's ratio, hi / {race['slice_ratio']:.3g}."
    return [
        f"**Race** (ranked by {score}): {len(race['candidates'])} candidates in short trials of the stage's own "
        f"schedule; winner **{race['winner']:.2e}**.{ratio}",
        "",
        *trials,
        "",
        "Curve rules' picks: " + ", ".join(f"{k} {v:.2e}" for k, v in race["rule_picks"].items()) + ".",
        f"Cost: {cost['iterations']} iterations, {cost['seconds']:.0f} s, {cost['trainings']:.2f} trainings of the "
        f"stage ({cost['stage_iterations']} iterations each).",
    ]


def _rel(path: str, run: RunInfo) -> str:
    return os.path.relpath(path, run.run_dir)


def metrics_rows(trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch of each training stage (the metrics table of the report and of the artifact)."""
    rows = []
    for t in trainings:
        for i, epoch in enumerate(t["epochs"], 1):
            rows.append(
                {"stage": t["stage"], "epoch": i, **{k: round(v, 4) for k, v in epoch.items() if v is not None}}
            )
    return rows


def render_report(
    cfg: RunConfig,
    run: RunInfo,
    *,
    data: dict[str, Any],
    gates: list[tuple[dict[str, Any], dict[str, Any]]],
    trainings: list[dict[str, Any]],
    model: dict[str, Any] | None,
    stage_states: dict[str, str],
    resumed: bool,
    outcome: str = "finished",
    promotion: dict[str, Any] | None = None,
) -> str:
    lines = [
        f"# lrgate run `{run.run_id}`: {cfg.name}",
        "",
        f"- folder: `{run.run_dir}`" + (" (resumed)" if resumed else ""),
        f"- data: {data['images']} images, {len(data['classes'])} classes ({', '.join(data['classes'])}), "
        f"fingerprint `{run.data_fingerprint}`",
        f"- model: `{cfg.model.arch}`, image size {cfg.train.image_size}, batch size {cfg.train.batch_size}; "
        f"config digest `{run.config_digest}`",
        "- stages: " + ", ".join(f"{k} {v}" for k, v in stage_states.items()),
        f"- outcome: **{outcome}**",
        *(
            [f"- latest model: {'this run' if promotion['promoted'] else 'unchanged'} ({promotion['why']})"]
            if promotion
            else []
        ),
        "",
    ]
    for n, (record, decision) in enumerate(gates, 1):
        s = record["suggestion"]
        verdict = (
            f"Rejected by {decision['reviewer']}"
            if decision["value"] is None
            else f"Trained with **{format_value(decision['value'])}** ({decision['source']})"
        )
        suggested = (
            f"the range test could not be read: {record['error']}"
            if s is None
            else f"suggested {format_value(s['slice'] or s['lr'])} by `{s['method']}`"
        )
        state = s["state"] if s is not None else record.get("state", record["gate"])
        state = "" if state == record["gate"] else f" ({state})"
        reason = f" (reason: {decision['reason']})" if decision["reason"] else ""
        lines += [
            f"## Gate {n}: {record['gate']}{state}",
            "",
            f"{verdict}; policy `{decision['policy']}`, {decision['action']} by {decision['reviewer']} at "
            f"{decision['at']}{reason}; {suggested}.",
            "",
        ]
        if s is not None:
            lines += [f"![gate {n} review plot]({_rel(record['plot'], run)})", "", "```", record["choices"], "```", ""]
            if s.get("race"):
                lines += [*race_markdown(s["race"]), ""]
        elif record.get("plot"):  # the recorded curve that could not be read
            lines += [f"![gate {n} recorded curve]({_rel(record['plot'], run)})", ""]
    if not trainings:
        return "\n".join(lines)
    lines += [
        "## Training",
        "",
        "| stage | trained with | epochs | seconds | images/s | last epoch |",
        "|---|---|---|---|---|---|",
    ]
    for t in trainings:
        last = ", ".join(f"{k} {v:.4f}" for k, v in t["epochs"][-1].items() if v is not None)
        lines.append(
            f"| {t['stage']} | {format_value(t['fit_lr'])} | {len(t['epochs'])} | {t['seconds']:.0f} | "
            f"{t['images_per_s'] or 0:.0f} | {last} |"
        )
    rows = metrics_rows(trainings)
    if rows:
        keys = list(rows[0])
        lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    if model is None:
        return "\n".join(lines)
    lines += [
        "",
        "## Model",
        "",
        f"`{_rel(model['model'], run)}`: load it with `fastai.learner.load_learner(path)`, then "
        "`learn.predict(image_path)`; classes: " + ", ".join(model["classes"]) + ".",
        "",
    ]
    return "\n".join(lines)
