"""One folder per run: what it was started with, and the key that finished stages are cached under.

A new run gets a new folder and a new id, so next week's scheduled run of the same config trains afresh.
Resuming reopens a folder: its config and data must be what they were (same config digest, same data
fingerprint), and the stages it finished come back from the cache instead of being trained again. lrgate reads
each finished stage's record itself, as plain JSON, before Prefect does (:func:`read_stage_record`), and checks
the files it names (:func:`changed_files`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lrgate.core.config import RunConfig
from lrgate.core.errors import LrgateError
from lrgate.core.outputs import file_digest, write_text, writing

RUN_FILE = "run.json"


class RunDirError(LrgateError):
    """A run folder that cannot be resumed with this config or data."""


@dataclass(frozen=True)
class RunInfo:
    """A run's identity: its folder, id, config digest and data fingerprint."""

    run_dir: Path
    run_id: str
    config_digest: str
    data_fingerprint: str

    def stage_key(self, stage: str) -> str:
        """The cache key of one stage of this run (Prefect's cache_key_fn returns it)."""
        return f"lrgate-{self.run_id}-{self.config_digest}-{self.data_fingerprint}-{stage}"

    def path(self, name: str) -> Path:
        return self.run_dir / name


def run_stamp(created: datetime | None, flow_run_id: object) -> str:
    """``<UTC time>-<first 8 of the flow run id>``: names a flow run's folder, the same on every re-run of it."""
    return f"{(created or datetime.now(UTC)).astimezone(UTC):%Y%m%d-%H%M%S}-{str(flow_run_id)[:8]}"


def open_run(cfg: RunConfig, config_path: Path, run_dir: Path, data_fingerprint: str) -> tuple[RunInfo, bool]:
    """Start a run in ``run_dir``, or reopen the run it holds; returns ``(info, resumed)``.

    Raises
    ------
    RunDirError
        ``run_dir`` holds a run of another config, or its data changed since.
    """
    # Absolute from here on: fastai joins relative names onto learn.path (the run folder) when it exports.
    run_dir = Path(run_dir).resolve()
    record = run_dir / RUN_FILE
    if record.exists():
        saved = json.loads(record.read_text())
        if saved["config_digest"] != cfg.digest():
            raise RunDirError(
                f"{run_dir} holds a run of another config (digest {saved['config_digest']}, this one "
                f"{cfg.digest()}): resume it with its own config ({run_dir / 'config.yaml'}) or start a new run"
            )
        if saved["data_fingerprint"] != data_fingerprint:
            raise RunDirError(
                f"{run_dir}: the data changed since this run started (fingerprint {saved['data_fingerprint']}, "
                f"now {data_fingerprint}): start a new run"
            )
        return RunInfo(run_dir, saved["run_id"], saved["config_digest"], saved["data_fingerprint"]), True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not an lrgate run folder: choose another --out")
    info = RunInfo(run_dir, uuid.uuid4().hex[:12], cfg.digest(), data_fingerprint)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config_path, run_dir / "config.yaml")
    write_text(
        record,
        json.dumps(
            {
                "run_id": info.run_id,
                "config_digest": info.config_digest,
                "data_fingerprint": info.data_fingerprint,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "config": cfg.model_dump(mode="json"),
            },
            indent=2,
        ),
    )
    return info, False


# The one serializer lrgate persists stage results with (tasks.stages.cached): JSON, with no object hooks.
STAGE_SERIALIZER = {"type": "json", "jsonlib": "json", "object_decoder": None, "loads_kwargs": {}}
# Result fields that name a file a later stage reads: each must be in the record's "files", with its digest.
FILE_FIELDS = ("checkpoint", "model")


def read_stage_record(path: Path, run: RunInfo) -> dict[str, Any] | None:
    """The result a finished stage persisted at ``path`` (a Prefect result record), read as plain JSON and
    checked; None when there is no such file.

    Prefect decodes a record with whatever serializer the record's own metadata names, pickle included, so a
    crafted record would run code on resume: lrgate reads the record first and lets Prefect at it only if it is
    what lrgate writes (:data:`STAGE_SERIALIZER`, a JSON object whose files are digested and inside the run).

    Raises
    ------
    RunDirError
        The file is not a stage record that this lrgate wrote (another serializer, not JSON, a malformed result).
    """
    if not path.is_file():
        return None

    def refuse(why: str) -> RunDirError:
        return RunDirError(
            f"{path}: not a stage record that lrgate wrote ({why}); lrgate reads only its own JSON: delete the file "
            "to redo the stage, or start a new run"
        )

    try:
        record = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise refuse("not JSON") from None
    metadata = record.get("metadata") if isinstance(record, dict) else None
    serializer = metadata.get("serializer") if isinstance(metadata, dict) else None
    if not isinstance(serializer, dict) or not isinstance(record.get("result"), str):
        raise refuse("no serializer or result")
    if serializer.get("type") != "json":
        raise refuse(f"its serializer is {serializer.get('type')!r}")
    differ = [f"{k}={serializer.get(k)!r}" for k, v in STAGE_SERIALIZER.items() if serializer.get(k) != v]
    if differ:  # lrgate < 0.4.0 let Prefect's object hooks decode its JSON
        raise refuse(f"its JSON serializer has {', '.join(differ)}")
    try:
        result = json.loads(record["result"])
    except ValueError:
        raise refuse("its result is not JSON") from None
    if not isinstance(result, dict):
        raise refuse(f"its result is a {type(result).__name__}, not a JSON object")
    files = result.get("files", {})
    if not isinstance(files, dict) or not all(_is_digest(d) for d in files.values()):
        raise refuse("its files have no sha256 and size")
    for name in files:
        if not Path(name).resolve().is_relative_to(run.run_dir):
            raise refuse(f"it names a file outside the run folder: {name}")
    for field in FILE_FIELDS:
        if field in result and result[field] not in files:
            raise refuse(f"its {field} {result[field]} has no digest (written by lrgate < 0.4.0?)")
    return result


def changed_files(result: dict[str, Any]) -> list[str]:
    """The files a stage record names whose size or sha256 is no longer what the stage wrote (or that are gone)."""
    changed = []
    for name, want in result.get("files", {}).items():
        path = Path(name)
        if not path.is_file() or path.stat().st_size != want["size"] or file_digest(path) != want:
            changed.append(name)
    return changed


def _is_digest(d: object) -> bool:
    return isinstance(d, dict) and isinstance(d.get("sha256"), str) and isinstance(d.get("size"), int)
