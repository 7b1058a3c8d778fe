"""The guard of unattended gates, and the history it compares with.

An ``auto`` gate of a config with a ``guard`` goes on by itself only when the suggestion raised no warning,
lies inside the allowed lr range, and is within a given number of decades of the last value that went on at
that gate for that config. The history is a small JSON file per config in its output folder.
"""

from __future__ import annotations

import fcntl
import json
import math
from pathlib import Path

from lrgate.core.config import GuardConfig, RunConfig
from lrgate.core.gate_records import SuggestionRecord, Value, top_lr
from lrgate.core.outputs import write_text


def history_path(cfg: RunConfig) -> Path:
    return cfg.output_dir / f"{cfg.name}.history.json"


def last_value(cfg: RunConfig, gate: str) -> Value | None:
    """The last value that went on at ``gate`` for this config (approved, overridden or passed by the guard)."""
    path = history_path(cfg)
    if not path.exists():
        return None
    entries = json.loads(path.read_text()).get(gate, [])
    return entries[-1]["value"] if entries else None


def remember(cfg: RunConfig, gate: str, value: Value, run_id: str, at: str) -> None:
    """Append a value that went on at ``gate`` to the config's history (atomically, and under a file lock: runs of
    one config that finish together, in a fleet, each keep their entry)."""
    path = history_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        history = json.loads(path.read_text()) if path.exists() else {}
        history.setdefault(gate, []).append({"value": value, "run_id": run_id, "at": at})
        write_text(path, json.dumps(history, indent=2))


def guard_problem(suggestion: SuggestionRecord, guard: GuardConfig, last: Value | None) -> str | None:
    """Why the guard stops ``suggestion``, or None when it may go on."""
    if suggestion.warnings:
        return f"the suggestion raised {len(suggestion.warnings)} warning(s): {suggestion.warnings[0]}"
    value = suggestion.value
    lo, hi = guard.lr_range
    ends = value if isinstance(value, list) else [value]
    outside = [v for v in ends if not lo <= v <= hi]
    if outside:
        return f"{outside[0]:.2e} lies outside the allowed range {lo:.1e} .. {hi:.1e}"
    if last is not None:
        apart = abs(math.log10(top_lr(value)) - math.log10(top_lr(last)))
        if apart > guard.max_decades_from_last:
            return (
                f"{top_lr(value):.2e} is {apart:.1f} decades from the last value that went on, {top_lr(last):.2e} "
                f"(at most {guard.max_decades_from_last:g} allowed)"
            )
    return None
