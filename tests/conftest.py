from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
