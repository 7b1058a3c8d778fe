"""Stage helpers that CI can only check on a CPU: device choice, precision fallback, worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrgate.config import load_config
from lrgate.run_dir import RunInfo
from lrgate.stages import DeviceError, effective_precision, make_learner, resolve_device
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
    from lrgate.run_dir import open_run

    cfg_path = tiny_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    info, resumed = open_run(load_config(cfg_path), cfg_path, Path("out/run"), "fingerprint")
    assert info.run_dir == tmp_path / "out" / "run" and info.run_dir.is_absolute() and not resumed
