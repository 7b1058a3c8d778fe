"""The run report: one markdown page a reviewer reads top to bottom (written last, atomically)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lrgate.core.config import RunConfig
from lrgate.core.gate_records import Decision, GateRecord, SuggestionRecord, format_value
from lrgate.core.race_plan import LOSS_RUNAWAY, SHORT_FROZEN_RANKING, SLICE_PICK_STANDARD_ERRORS, Trial, ran_away
from lrgate.core.run_dir import RunInfo

__all__ = [
    "decision_markdown",
    "format_value",
    "gate_markdown",
    "markdown_table",
    "metrics_rows",
    "race_markdown",
    "render_report",
]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table's lines; cells are shown with ``str`` (format numbers before; a ``|`` in a cell is escaped,
    a line break becomes a space). ``align``: one letter per column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)

    def cell(c: object) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def race_markdown(race: dict[str, Any], compact: bool = False) -> list[str]:
    """A race record (``Race.to_dict``) as markdown lines: its trials, the curve rules, its cost. The trials are a
    table, or with ``compact`` one line each (a page as narrow as Prefect's Resume form scrolls a wide table)."""
    score = race["score"]
    last_rung = max(t["rung"] for t in race["trials"])
    parsed = [Trial.from_dict(t) for t in race["trials"]]
    sliced = race["slice_ratio"] is not None
    away = {(t.rung, t.lr) for t in ran_away(parsed, score, race["cost"]["stage_iterations"], sliced)}
    rows = []
    for t in race["trials"]:
        won = t["lr"] == race["winner"] and t["rung"] == last_rung
        loss = "diverged" if t["valid_loss"] is None else f"{t['valid_loss']:.4g}"
        if (t["rung"], t["lr"]) in away:
            loss += " (ran away)"
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
    last_iterations = next(t.iterations for t in parsed if t.rung == last_rung)
    if sliced and score != "valid_loss" and last_iterations < cost["stage_iterations"]:  # race_plan.race_winner
        ratio += (
            " The last rung is shorter than the stage, and short trials favour low lrs: of its trials within"
            f" {SLICE_PICK_STANDARD_ERRORS:g} standard errors of the best {score}, the highest lr wins."
        )
    ranked = (
        score
        if sliced or score == SHORT_FROZEN_RANKING
        else f"{score}, a rung shorter than the stage by {SHORT_FROZEN_RANKING}"
    )
    return [
        f"**Race** (ranked by {ranked}; in a rung shorter than the stage, a trial whose loss ran away, past "
        f"{LOSS_RUNAWAY:g} times the rung's best, ranks after every sound one): {len(race['candidates'])} "
        f"candidates in short trials of the stage's own schedule; winner **{race['winner']:.2e}**.{ratio}",
        "",
        *trials,
        "",
        "Curve rules' picks: "
        + ", ".join(f"{k} {v:.2e}" for k, v in race["rule_picks"].items())
        + (
            "." if race.get("head_lr") is None else f"; candidates around the frozen stage's lr, {race['head_lr']:.2e}."
        ),
        f"Cost: {cost['iterations']} iterations, {cost['seconds']:.0f} s, {cost['trainings']:.2f} trainings of the "
        f"stage ({cost['stage_iterations']} iterations each).",
    ]


def _choices_list(choices: str) -> str:
    """The choices table (``format_choices``) as a markdown list: a preformatted block as wide as the table
    scrolls sideways on a narrow page, and a list wraps. Runs of spaces (the table's columns) become commas."""
    items = []
    for line in choices.splitlines():
        cells = [c for c in line.strip().split("  ") if c.strip() not in ("", "-")]
        if not cells or line.strip().startswith("1st"):
            continue  # the header of the best-choices rows: said in their own text
        head, *rest = (c.strip() for c in cells)
        if head in ("gradient", "loss"):
            items.append(f"- best by {head}, right to left: {', '.join(rest) or 'none'}")
        else:
            items.append(f"- {', '.join([head, *rest])}")
    return "\n".join(i for i in items if i != "- best choices, right to left:")


def gate_markdown(record: GateRecord, title: str, full_page: str | None = None) -> str:
    """A gate's review page: the suggestion, the plot (embedded, so the UI shows it), the warnings, the race and the
    choices, then the files. ``full_page`` (a URL: the gate's artifact) is linked under the plot, to read it large."""
    png = base64.b64encode(Path(record.plot).read_bytes()).decode()
    link = f"[Open this page full width, to read the plot large]({full_page})\n\n" if full_page else ""
    folder = Path(record.plot).parent
    s = record.suggestion
    if s is None:  # the curve could not be read: its graph, and what a person may still decide
        lo, hi = record.tested_range
        kind = "a slice (lo and hi)" if record.takes_slice else "an lr"
        return (
            f"# {title}\n\n**The range test cannot be read ({record.state}):** {record.error}\n\n"
            f"No suggestion to approve: override with {kind} inside the tested range {lo:.1e} .. {hi:.1e}, or "
            f"reject.\n\n![the recorded curve](data:image/png;base64,{png})\n\n{link}"
            f"**Files**, in {folder}:\n\n- {Path(record.plot).name} (the plot)\n"
            f"- {Path(record.curve_csv).name} (the curve: lr, loss)\n"
        )
    value = format_value(s.slice) if s.slice else f"lr = {format_value(s.lr)}"
    warnings = "".join(f"\n- {w}" for w in s.warnings) or "\n- none"
    how = "the race" if s.race else s.method
    race = "\n".join(race_markdown(s.race, compact=True)) + "\n\n" if s.race else ""
    return (
        f"# {title}\n\n**Suggestion ({s.state}, {how}):** `{value}`\n\n"
        f"![review plot](data:image/png;base64,{png})\n\n{link}**Warnings:**{warnings}\n\n{race}"
        f"**The range test's choices:**\n\n{_choices_list(record.choices)}\n\n"
        f"**Files**, in {folder}:\n\n- {Path(record.plot).name} (the plot)\n"
        f"- {Path(record.frame_csv).name} (the data behind it)\n"
        f"- {Path(record.curve_csv).name} (the curve: lr, loss)\n"
    )


def _suggested(s: SuggestionRecord | None) -> str:
    return "none (the curve could not be read)" if s is None else format_value(s.value)


def decision_markdown(d: Decision) -> str:
    """A gate's decision as the page of its artifact."""
    rows = [
        ["reviewer", d.reviewer],
        ["when", d.at],
        ["policy", d.policy],
        ["suggested", _suggested(d.suggested)],
        ["trained with", f"{format_value(d.value)} ({d.source})"],
        ["reason", d.reason or "-"],
    ]
    return "\n".join([f"# Gate {d.gate}: {d.action}", "", *markdown_table(["", ""], rows)]) + "\n"


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
    gates: list[tuple[GateRecord, Decision]],
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
        s = record.suggestion
        verdict = (
            f"Rejected by {decision.reviewer}"
            if decision.value is None
            else f"Trained with **{format_value(decision.value)}** ({decision.source})"
        )
        suggested = (
            f"the range test could not be read: {record.error}"
            if s is None
            else f"suggested {format_value(s.value)} by `{s.method}`"
        )
        state = "" if record.state == record.gate else f" ({record.state})"
        reason = f" (reason: {decision.reason})" if decision.reason else ""
        lines += [
            f"## Gate {n}: {record.gate}{state}",
            "",
            f"{verdict}; policy `{decision.policy}`, {decision.action} by {decision.reviewer} at "
            f"{decision.at}{reason}; {suggested}.",
            "",
        ]
        if s is not None:
            lines += [f"![gate {n} review plot]({_rel(record.plot, run)})", "", "```", record.choices, "```", ""]
            if s.race:
                lines += [*race_markdown(s.race), ""]
        elif record.plot:  # the recorded curve that could not be read
            lines += [f"![gate {n} recorded curve]({_rel(record.plot, run)})", ""]
    if not trainings:
        return "\n".join(lines)
    trained = [
        [
            t["stage"],
            format_value(t["fit_lr"]),
            len(t["epochs"]),
            f"{t['seconds']:.0f}",
            f"{t['images_per_s'] or 0:.0f}",
            ", ".join(f"{k} {v:.4f}" for k, v in t["epochs"][-1].items() if v is not None),
        ]
        for t in trainings
    ]
    header = ["stage", "trained with", "epochs", "seconds", "images/s", "last epoch"]
    lines += ["## Training", "", *markdown_table(header, trained)]
    rows = metrics_rows(trainings)
    if rows:
        keys = list(rows[0])
        lines += ["", *markdown_table(keys, ([r.get(k, "") for k in keys] for r in rows))]
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
