"""One folder per run: what it was started with, and the key that finished stages are cached under.

A new run gets a new folder and a new id, so next week's scheduled run of the same config trains afresh.
Resuming reopens a folder: its config and data must be what they were (same config digest, same data
fingerprint), and the stages it finished come back from the cache instead of being trained again.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lrgate.config import RunConfig
from lrgate.errors import LrgateError
from lrgate.outputs import write_text

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
    run_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo(run_dir, uuid.uuid4().hex[:12], cfg.digest(), data_fingerprint)
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
