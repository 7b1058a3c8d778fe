"""Stage helpers that CI can only check on a CPU (device choice, precision fallback, worker processes), and a
training stage's per-epoch checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrgate.core.config import load_config
from lrgate.core.run_dir import RunInfo, open_run
from lrgate.training.stage_functions import (
    DeviceError,
    EpochCheckpoint,
    build_initial,
    effective_precision,
    load_images,
    make_learner,
    resolve_device,
    train,
)
from tests.conftest import tiny_config


def test_auto_device_is_cpu_without_a_gpu_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="no GPU"):
        resolve_device("cuda")


def test_mixed_precision_applies_on_cuda_only(tmp_path):
    cfg = load_config(tiny_config(tmp_path, "precision: bf16"))
    assert effective_precision(cfg, "cuda") == "bf16"
    assert effective_precision(cfg, "cpu") == "fp32"


def test_worker_processes_load_batches(tmp_path):
    # The GPU default (worker processes, started by a fork server): the data pipeline must pickle.
    cfg = load_config(tiny_config(tmp_path, "train: {batch_size: 16, image_size: 32, num_workers: 2}"))
    learn = make_learner(cfg, RunInfo(tmp_path / "run", "r", "c", "d"), log=lambda _: None)
    x, y = learn.dls.train.one_batch()
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)


def test_a_relative_run_folder_is_made_absolute(tmp_path, monkeypatch):
    # fastai's export joins a relative name onto learn.path (the run folder itself): "run/run/model.pkl".
    cfg_path = tiny_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    info, resumed = open_run(load_config(cfg_path), cfg_path, Path("out/run"), "fingerprint")
    assert info.run_dir == tmp_path / "out" / "run" and info.run_dir.is_absolute() and not resumed


class Killed(BaseException):
    """Raised once an epoch is saved: the fit stops there, as if its process had been killed (a BaseException
    passes through fastai's callback error handling)."""


def test_an_epoch_file_resumes_only_the_same_fit_and_only_intact(trains, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "train: {frozen_epochs: 2, batch_size: 16, image_size: 32}")
    cfg = load_config(config)
    run, _ = open_run(cfg, config, tmp_path / "run", load_images(cfg).fingerprint)
    start = build_initial(cfg, run, log=lambda _: None)["checkpoint"]
    save = EpochCheckpoint.after_epoch

    def save_then_die(self: EpochCheckpoint) -> None:
        save(self)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(EpochCheckpoint, "after_epoch", save_then_die)
        with pytest.raises(Killed):
            train(cfg, run, start, 0.01, "train-frozen", log=lambda _: None)
    weights, record = run.path("checkpoints/train-frozen-epoch.pth"), run.path("checkpoints/train-frozen-epoch.json")
    kept = weights.read_bytes(), record.read_text()
    assert json.loads(kept[1])["epoch"] == 1

    def resume(value: float, weights_bytes: bytes) -> tuple[dict, list[str], list[str]]:
        weights.write_bytes(weights_bytes)
        record.write_text(kept[1])
        logs, warnings = [], []
        return train(cfg, run, start, value, "train-frozen", log=logs.append, warn=warnings.append), logs, warnings

    ignoring = "train-frozen: ignoring checkpoints/train-frozen-epoch.pth"
    metrics, logs, warnings = resume(0.02, kept[0])  # another lr than the killed fit's
    assert warnings == [f"{ignoring} (it is another fit's: its value not this one's): training from epoch 1"]
    assert metrics["resumed_from_epoch"] == 1 and "epoch 1/2" in " ".join(logs)
    assert not weights.exists() and not record.exists()  # the stage finished: its own checkpoint replaces them

    corrupt = bytearray(kept[0])
    corrupt[len(corrupt) // 2] ^= 0xFF
    metrics, logs, warnings = resume(0.01, bytes(corrupt))
    assert warnings == [
        f"{ignoring} (its sha256 or size is not the one recorded: it changed since it was written): training from "
        "epoch 1"
    ]
    assert metrics["resumed_from_epoch"] == 1

    metrics, logs, warnings = resume(0.01, kept[0])
    assert warnings == [] and "train-frozen: resuming from epoch 2 of 2 (checkpoints/train-frozen-epoch.pth)" in logs
    assert not any(line.startswith("epoch 1/2") for line in logs)
    assert metrics["resumed_from_epoch"] == 2 and len(metrics["epochs"]) == 2
    assert metrics["epochs"][0] == json.loads(kept[1])["epochs"][0]  # the killed fit's epoch, merged
