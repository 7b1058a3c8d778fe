"""Promotion: the config's ``latest`` model moves to a new run only when that run is no worse.

``<output_dir>/<name>.latest.json`` names the current model, its run and its metric; the symlink
``<output_dir>/<name>-latest`` points at its run folder. Both are replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lrgate.core.config import RunConfig
from lrgate.core.outputs import write_text


def latest_path(cfg: RunConfig) -> Path:
    return cfg.output_dir / f"{cfg.name}.latest.json"


def current_latest(cfg: RunConfig) -> dict[str, Any] | None:
    path = latest_path(cfg)
    return json.loads(path.read_text()) if path.exists() else None


def should_promote(new: float, current: float | None, metric: str, tolerance: float) -> bool:
    """No worse than the current model's metric, within ``tolerance`` (accuracy: higher is better)."""
    if current is None:
        return True
    return new >= current - tolerance if metric == "accuracy" else new <= current + tolerance


def promote(cfg: RunConfig, run_dir: Path, model: str, metric_value: float, run_id: str) -> dict[str, Any]:
    """Move ``latest`` to this run if it is no worse; return what happened (``promoted`` and why)."""
    current = current_latest(cfg)
    rule = cfg.promotion
    previous = None if current is None else current["metric_value"]
    if not should_promote(metric_value, previous, rule.metric, rule.tolerance):
        return {
            "promoted": False,
            "why": f"{rule.metric} {metric_value:.4f} is worse than the latest model's {previous:.4f} "
            f"(tolerance {rule.tolerance:g}): {current['run_dir']} stays latest",
        }
    write_text(
        latest_path(cfg),
        json.dumps(
            {
                "run_id": run_id,
                "run_dir": str(run_dir),
                "model": model,
                "metric": rule.metric,
                "metric_value": metric_value,
            },
            indent=2,
        ),
    )
    link = cfg.output_dir / f"{cfg.name}-latest"
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(run_dir.resolve(), target_is_directory=True)
    os.replace(tmp, link)
    why = "first model of this config" if previous is None else f"{rule.metric} {metric_value:.4f} vs {previous:.4f}"
    return {"promoted": True, "why": why}
