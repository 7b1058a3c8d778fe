from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Offline: Prefect's server would try to send telemetry and log an error each time.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

EXAMPLE_CURVES = Path(__file__).resolve().parents[1] / "lrgate" / "example_curves"


def bowl(x: np.ndarray, *descents: tuple[float, float], up: float = -0.3, level: float = 2.0) -> np.ndarray:
    """A synthetic range test in x = log10(lr): a tanh step down per (centre, depth), then an exponential upturn.

    Each descent's steepest point (the loss gradient's minimum) sits at its centre, so the answer is
    known by construction.
    """
    loss = np.full_like(x, level)
    for centre, depth in descents:
        loss -= depth * (1 + np.tanh((x - centre) / 0.4)) / 2
    return loss + np.exp(4 * (x - up))


@pytest.fixture(scope="session")
def body() -> dict:
    """A tiny CNN body pretrained on digits 0-4 (once per test session)."""
    from tests.tiny_learners import pretrained_body

    return pretrained_body()


def make_image_folder(root, classes=("circle", "square"), per_class: int = 24, size: int = 24):
    """A small real image folder: one sub-folder of PNGs per class (bright disc vs bright square on noise)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(im)
            box = [4 + i % 3, 4, size - 5, size - 5 - i % 3]
            (draw.ellipse if label == classes[0] else draw.rectangle)(box, fill=(230, 200, 40))
            im.save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real ``prefect server`` on 127.0.0.1 and a free port, started once per test session and stopped after.

    In-process flows reach it through Prefect's settings, subprocesses (``lrgate run``, workers) through
    ``PREFECT_API_URL`` in the environment. Yields the API URL.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.local_prefect import start_server, stop_groups

    server, url = start_server(tmp_path_factory.mktemp("prefect-server"), os.environ)
    try:
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        # Send what this process still has queued for the server (logs, events) while it is there to take it.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        stop_groups([server])


TINY_CONFIG = """
name: %(name)s
data: {source: demo, per_class: 12}
train: {frozen_epochs: 1, unfrozen_epochs: %(unfrozen_epochs)d, batch_size: 16, image_size: 32}
lr_find: {num_it: 24, end_lr: 1, stop_div: false}
device: cpu
output_dir: runs
%(race)s
%(extra)s
"""


def tiny_config(
    folder: Path, extra: str = "", unfrozen_epochs: int = 1, name: str = "tiny", race: bool = False
) -> Path:
    """A pipeline config that trains EfficientNet-Lite0 on 120 digits at 32 px: seconds on a CPU. Its ``name``
    keys its artifacts on the shared test server: a test whose gate artifacts differ uses a name of its own.

    The race (the product's default) is off unless ``race``: it adds about 10 s to each run, and the tests that are
    about the race turn it on (tests/test_pipeline.py, tests/test_ui.py)."""
    path = folder / "tiny.yaml"
    race_line = "" if race else "race: off"
    path.write_text(TINY_CONFIG % {"extra": extra, "unfrozen_epochs": unfrozen_epochs, "name": name, "race": race_line})
    return path


def suggestion_record(**fields):
    """A suggestion record (``lrgate suggest --json``'s shape) with ``fields`` set; the rest plain defaults."""
    from lrgate.core.gate_records import SuggestionRecord

    base = {
        "state": "frozen",
        "method": "bowl",
        "params": {"noise": 3, "margin": 0.5},
        "lr": 1e-3,
        "slice": None,
        "candidates": {"gradient": [], "loss": []},
        "min_loss_lr_div10": 1e-3,
        "tested_range": [1e-7, 1.0],
        "warnings": [],
    }
    return SuggestionRecord.read({**base, **fields})
