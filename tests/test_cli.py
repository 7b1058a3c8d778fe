"""`lrgate suggest`, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import EXAMPLE_CURVES

LRGATE = str(Path(sys.executable).parent / "lrgate")
FROZEN = EXAMPLE_CURVES / "digits_adam_bs64_frozen.csv"
UNFROZEN = EXAMPLE_CURVES / "digits_adam_bs64_unfrozen.csv"


def lrgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LRGATE, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_json_output_keeps_the_contract():
    out = lrgate("suggest", UNFROZEN, "--unfrozen", "--method", "inflection", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["state"] == "unfrozen" and d["method"] == "inflection"
    assert d["params"] == {"noise": 3, "margin": 1.0}
    lo, hi = d["slice"]
    assert d["tested_range"][0] <= lo <= hi == d["lr"] < d["tested_range"][1]
    assert isinstance(d["candidates"]["gradient"], list) and isinstance(d["candidates"]["loss"], list)
    assert isinstance(d["min_loss_lr_div10"], float) and isinstance(d["warnings"], list)


def test_frozen_json_has_no_slice_and_parameters_pass_through():
    d = json.loads(lrgate("suggest", FROZEN, "--frozen", "--noise", "5", "--margin", "0.5", "--json").stdout)
    assert d["slice"] is None and d["state"] == "frozen"
    assert d["params"] == {"noise": 5, "margin": 0.5}


def test_table_output_prints_the_choices(tmp_path):
    out = lrgate("suggest", FROZEN, "--frozen", "--plot", tmp_path / "g1.png")
    assert out.returncode == 0, out.stderr
    assert "gradient" in out.stdout and "loss" in out.stdout and "suggestion: lr = " in out.stdout
    with Image.open(tmp_path / "g1.png") as im:
        assert im.format == "PNG"
    assert (tmp_path / "g1.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv", "--frozen"], "missing.csv: no such file"),
        (["{bad}", "--frozen"], "is not a number"),
        (["{curve}", "--frozen", "--noise", "0"], "noise must be a positive integer"),
        (["{curve}", "--frozen", "--noise", "500"], "needs at least"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("lr,loss\n1e-7,x\n")
    args = [a.format(bad=bad, curve=FROZEN) for a in args]
    out = lrgate("suggest", *args)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("lrgate: error: ")
    assert message in out.stderr and "Traceback" not in out.stderr


def test_a_state_flag_is_required_and_exclusive():
    assert lrgate("suggest", FROZEN).returncode == 2
    assert lrgate("suggest", FROZEN, "--frozen", "--unfrozen").returncode == 2


def test_python_dash_m_works_too():
    out = subprocess.run(
        [sys.executable, "-m", "lrgate", "suggest", FROZEN, "--frozen", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "frozen"


def test_run_logs_keep_a_bugs_traceback_and_drop_lrgates_own():
    import logging

    from lrgate.errors import CurveError, WithoutTraceback

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            info = sys.exc_info()
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed: %r", (exc,), info)

    ours, bug = record(CurveError("the curve is empty")), record(KeyError("x"))
    assert WithoutTraceback().filter(ours) and WithoutTraceback().filter(bug)
    assert ours.exc_info is None and "the curve is empty" in ours.getMessage()
    assert bug.exc_info is not None and bug.exc_info[0] is KeyError
