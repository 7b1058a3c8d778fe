from __future__ import annotations

import hashlib
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

# Offline: Prefect's server would try to send telemetry and log an error each time.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A suite started in the background by a shell without job control (`pytest ... &` in a script, `nohup`, many CI
# runners) inherits SIGINT ignored, and so would every process its tests start: a Prefect worker, which stops on
# SIGTERM by sending itself SIGINT, would then never stop (it is SIGKILLed after its grace time), and a Python
# child would take no Ctrl-C. Catch SIGINT again, as a suite started at a terminal does: the processes the tests
# start then get its default (an exec resets a caught signal, not an ignored one).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

EXAMPLE_CURVES = Path(__file__).resolve().parents[1] / "lrgate" / "example_curves"

# The slow tier (`pytest -m "not slow"` leaves it out): a test is marked slow when it uses one of these fixtures,
# itself or through a fixture built on them (``item.fixturenames`` is the whole closure), never by hand.
SLOW_FIXTURES = frozenset({"prefect_api", "body", "trains", "starts_processes"})


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a fixture of :data:`SLOW_FIXTURES`; refuse two tests whose default
    config names (:func:`node_config_name`) would be the same."""
    named: dict[str, str] = {}
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        name = node_config_name(item.nodeid)
        if named.setdefault(name, item.nodeid) != item.nodeid:
            raise pytest.UsageError(
                f"{named[name]} and {item.nodeid} get the same config name {name!r}: rename one of them"
            )


@pytest.fixture(scope="session")
def trains() -> None:
    """Asked for by a test (or fixture) that trains a real fastai Learner itself, without ``body`` or a server:
    it puts the test in the slow tier. Nothing else."""


@pytest.fixture(scope="session")
def starts_processes() -> None:
    """Asked for by a test (or fixture) that starts a Prefect server, a worker, ``lrgate run`` or a torchrun launch
    itself: it puts the test in the slow tier. Nothing else."""


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
    """A tiny CNN body pretrained on digits 0-4 (once per test session): it trains, so its tests are slow."""
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
    """A real ``prefect server`` on 127.0.0.1 and a free port, started once per test session and stopped after
    (its tests are slow).

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


NAME_MAX = 40  # characters of a default config name


def node_config_name(nodeid: str) -> str:
    """The config name of the test ``nodeid``: ``tests/test_gates.py::test_x[a_1]`` gives ``gates-x-a-1``
    (lowercase letters, digits and dashes, as artifact keys must be); a longer one keeps its first
    ``NAME_MAX - 9`` characters and ends in a hash of the whole node id."""
    module, *rest = nodeid.split("::")
    words = [Path(module).stem.removeprefix("test_"), *(part.removeprefix("test_") for part in rest)]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-") or "tiny"
    if len(slug) <= NAME_MAX:
        return slug
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return f"{slug[: NAME_MAX - 9].rstrip('-')}-{digest}"


def current_test_name() -> str:
    """:func:`node_config_name` of the test running now (its setup, call or teardown, module fixtures included:
    those are set up for the first test that uses them); ``tiny`` outside a test."""
    current = os.environ.get("PYTEST_CURRENT_TEST")  # "tests/test_x.py::test_y[id] (call)"
    return node_config_name(current.rsplit(" (", 1)[0]) if current else "tiny"


def tiny_config(
    folder: Path, extra: str = "", unfrozen_epochs: int = 1, name: str | None = None, race: bool = False
) -> Path:
    """A pipeline config that trains EfficientNet-Lite0 on 120 digits at 32 px: seconds on a CPU.

    Its ``name`` keys its artifacts on the shared test server and names its history, latest and run folders in its
    output_dir: by default the requesting test's own (:func:`current_test_name`), so no two tests share an
    artifact key; read it back with ``load_config(path).name``. Pass ``name`` where a test needs a name of its
    choosing (two configs of one name, run names it looks for).

    The race (the product's default) is off unless ``race``: it adds about 10 s to each run, and the tests that are
    about the race turn it on (tests/test_pipeline.py, tests/test_ui.py)."""
    path = folder / "tiny.yaml"
    race_line = "" if race else "race: off"
    name = name or current_test_name()
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
