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
def prefect_api():
    """A real Prefect API (the embedded server on a temporary database), once per test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


TINY_CONFIG = """
name: tiny
data: {source: demo, per_class: 12}
train: {frozen_epochs: 1, unfrozen_epochs: %(unfrozen_epochs)d, batch_size: 16, image_size: 32}
lr_find: {num_it: 24}
device: cpu
output_dir: runs
%(extra)s
"""


def tiny_config(folder: Path, extra: str = "", unfrozen_epochs: int = 1) -> Path:
    """A pipeline config that trains EfficientNet-Lite0 on 120 digits at 32 px: seconds on a CPU."""
    path = folder / "tiny.yaml"
    path.write_text(TINY_CONFIG % {"extra": extra, "unfrozen_epochs": unfrozen_epochs})
    return path
