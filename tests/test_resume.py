"""A run killed mid fine-tune resumes from its last finished stage; a new run of the same config trains afresh.

Runs ``lrgate run`` as a user would, in subprocesses with Prefect's embedded server, and kills one with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lrgate.core.config import load_config
from lrgate.core.outputs import file_digest
from lrgate.core.run_dir import open_run
from lrgate.tasks.stages import RESULTS_DIR
from lrgate.training.stage_functions import load_images
from tests.conftest import tiny_config

LRGATE = str(Path(sys.executable).parent / "lrgate")
FINISHED_BEFORE_FINE_TUNE = ("build-learner", "gate-frozen", "train-frozen", "unfreeze", "gate-unfrozen")


def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**e, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def lrgate_run(tmp_path: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``lrgate run ARGS`` with its own embedded Prefect server; with ``ok``, it must succeed."""
    out = subprocess.run([LRGATE, "run", *args], capture_output=True, text=True, env=env(tmp_path), timeout=300)
    assert not ok or out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def kill_when(
    tmp_path: Path, config: Path, run: Path, ready: Callable[[], bool], *, timeout: float, before: str, wait: float = 0
) -> None:
    """Start ``lrgate run CONFIG --out RUN``, poll ``ready()`` (for ``timeout`` s at most), wait ``wait`` s more,
    then kill the run and its embedded server with SIGKILL: a crash, not a shutdown."""
    proc = subprocess.Popen(
        [LRGATE, "run", str(config), "--out", str(run)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(tmp_path),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before {before}"
            assert time.monotonic() < deadline, f"{timeout} s and not yet {before}"
            time.sleep(0.02)
        time.sleep(wait)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_run_resumes_without_redoing_finished_stages(starts_processes, tmp_path):
    config = tiny_config(tmp_path, unfrozen_epochs=12)  # a fine-tune long enough to be killed in
    run = tmp_path / "run"
    # decision.json is written once gate 2's stage has finished and its result is persisted; 1 s later the run is
    # inside its fine-tune
    decided = run / "gate-unfrozen" / "decision.json"
    kill_when(tmp_path, config, run, decided.exists, timeout=240, before="its fine-tune", wait=1.0)
    assert not (run / "checkpoints/3-fine-tuned.pth").exists() and not (run / "model.pkl").exists()
    # the finished stages' files (not fine-tune's epoch file, if it finished an epoch: it is gone once it is done)
    kept = {p: p.stat().st_mtime_ns for p in [*run.glob("checkpoints/[0-9]-*.pth"), *run.glob("gate-*/*")]}

    lrgate_run(tmp_path, str(config), "--resume", str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True
    assert {s: summary["stage_states"][s] for s in FINISHED_BEFORE_FINE_TUNE} == dict.fromkeys(
        FINISHED_BEFORE_FINE_TUNE, "Cached"
    )
    assert summary["stage_states"]["fine-tune"] == summary["stage_states"]["export"] == "Completed"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing finished was redone or rewritten
    assert (run / "model.pkl").exists()

    # Next week's run of the same config: a new folder, and every stage trains afresh.
    lrgate_run(tmp_path, str(config))
    (fresh,) = [p for p in (tmp_path / "runs").glob(f"{load_config(config).name}-2*")]
    states = json.loads((fresh / "summary.json").read_text())["stage_states"]
    assert set(states.values()) == {"Completed"}


def test_a_run_killed_mid_train_frozen_resumes_from_its_next_epoch(starts_processes, tmp_path):
    config = tiny_config(tmp_path)
    # three frozen epochs of 240 training images: a second or more each, so the kill lands between two epochs
    config.write_text(
        config.read_text().replace("{frozen_epochs: 1,", "{frozen_epochs: 3,").replace("per_class: 12", "per_class: 30")
    )
    run = tmp_path / "run"
    record = run / "checkpoints" / "train-frozen-epoch.json"
    # the record is written atomically, after the epoch's weights, once the epoch has finished
    kill_when(tmp_path, config, run, record.exists, timeout=300, before="train-frozen finished an epoch")
    done = json.loads(record.read_text())["epoch"]  # 1 unless this machine stalled the test for a whole epoch
    assert done < 3 and not (run / "checkpoints/1-frozen.pth").exists()
    assert not (run / "metrics-train-frozen.json").exists()

    out = lrgate_run(tmp_path, str(config), "--resume", str(run))
    log = out.stdout + out.stderr
    assert f"train-frozen: resuming from epoch {done + 1} of 3 (checkpoints/train-frozen-epoch.pth)" in log
    assert "train-frozen: resuming from epoch 1" not in log and "train-frozen: ignoring" not in log
    assert "epoch 1/3" not in log  # the saved epoch is not trained again
    metrics = json.loads((run / "metrics-train-frozen.json").read_text())
    assert len(metrics["epochs"]) == 3 and metrics["resumed_from_epoch"] == done + 1
    assert all(e["valid_loss"] > 0 and 0 <= e["accuracy"] <= 1 for e in metrics["epochs"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"].startswith("finished")
    states = summary["stage_states"]
    assert states["build-learner"] == states["gate-frozen"] == "Cached"
    assert states["train-frozen"] == states["fine-tune"] == states["export"] == "Completed"
    assert [p.name for p in run.glob("checkpoints/*-epoch.*")] == []  # the stages' own checkpoints replace them
    assert (run / "model.pkl").exists()


def test_resume_refuses_another_config(starts_processes, tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "x", "config_digest": "other", "data_fingerprint": "y"}))
    out = lrgate_run(tmp_path, str(config), "--resume", str(run), ok=False)
    assert out.returncode == 1 and "holds a run of another config" in out.stderr


def test_cli_config_errors_are_one_line(starts_processes, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: 0}\n")
    out = lrgate_run(tmp_path, str(bad), ok=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"lrgate: error: {bad}: train.batch_size: Input should be greater than or equal to 1"
    assert lrgate_run(tmp_path, str(bad), "--resume", str(tmp_path), ok=False).returncode == 1


class Touch:
    """Unpickling this creates ``path``: the code a crafted record would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_resume_never_unpickles_a_crafted_stage_record(starts_processes, tmp_path):
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    config = tiny_config(tmp_path)
    cfg = load_config(config)
    run, _ = open_run(cfg, config, tmp_path / "run", load_images(cfg).fingerprint)
    key = run.stage_key("build-learner")
    marker = tmp_path / "unpickled"
    # What Prefect would read back as build-learner's result: its metadata names the pickle serializer.
    crafted = run.path(RESULTS_DIR) / key
    crafted.parent.mkdir()
    serializer = PickleSerializer(picklelib="pickle")
    crafted.write_bytes(
        ResultRecord(
            metadata=ResultRecordMetadata(serializer=serializer, storage_key=key), result=Touch(marker)
        ).serialize()
    )

    out = lrgate_run(tmp_path, str(config), "--resume", str(run.run_dir), ok=False)
    assert not marker.exists()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("lrgate: error:")]
    assert error == (
        f"lrgate: error: {crafted}: not a stage record that lrgate wrote (its serializer is 'pickle'); lrgate "
        "reads only its own JSON: delete the file to redo the stage, or start a new run"
    )


def test_a_changed_checkpoint_is_redone_on_resume_and_no_temporary_folder_is_left(starts_processes, tmp_path):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    lrgate_run(tmp_path, str(config), "--out", str(run))
    assert not (run / "lr_find_tmp").exists()  # fastai's lr_find leaves it empty; the range test removes it
    checkpoint = run / "checkpoints" / "3-fine-tuned.pth"
    written = json.loads((run / "metrics-fine-tune.json").read_text())["files"][str(checkpoint)]
    assert written == file_digest(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[: written["size"] // 2])  # truncated, as by a full disk

    out = lrgate_run(tmp_path, str(config), "--resume", str(run))
    assert f"fine-tune: {checkpoint} changed since the stage wrote it: redoing the stage" in out.stdout + out.stderr
    states = json.loads((run / "summary.json").read_text())["stage_states"]
    assert {s: states[s] for s in FINISHED_BEFORE_FINE_TUNE} == dict.fromkeys(FINISHED_BEFORE_FINE_TUNE, "Cached")
    assert states["fine-tune"] == states["export"] == "Completed"
    rewritten = json.loads((run / "metrics-fine-tune.json").read_text())["files"][str(checkpoint)]
    assert rewritten == file_digest(checkpoint) and rewritten["size"] == written["size"]
