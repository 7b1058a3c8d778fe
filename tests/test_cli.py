"""`lrgate suggest`, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
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
        (["{negative}", "--frozen"], "line 2: lr -1e-07 is not a finite, positive number"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("lr,loss\n1e-7,x\n")
    negative = tmp_path / "negative.csv"
    negative.write_text("lr,loss\n-1e-7,2.5\n1e-6,2.4\n")
    args = [a.format(bad=bad, curve=FROZEN, negative=negative) for a in args]
    out = lrgate("suggest", *args)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("lrgate: error: ")
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("plot", ["victim.png", "victim.csv"])
def test_the_plot_never_overwrites_the_input_curve(tmp_path, plot):
    # The data beside the plot is <plot stem>.csv: victim.png would have written it over victim.csv.
    victim = tmp_path / "victim.csv"
    shutil.copyfile(FROZEN, victim)
    out = subprocess.run(
        [LRGATE, "suggest", "victim.csv", "--frozen", "--plot", plot], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert (
        out.stderr == f"lrgate: error: --plot {plot} would write victim.csv over the input curve victim.csv: "
        "name the plot otherwise\n"
    )
    assert victim.read_bytes() == FROZEN.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["victim.csv"]
    assert "refused if either is CURVE.csv itself" in lrgate("suggest", "--help").stdout


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot make files in: one without write permission, or, for root (which ignores
    permissions), /sys, where files cannot be created; skips the test where neither refuses."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            tempfile.TemporaryFile(dir=candidate).close()
        except OSError:
            return candidate
    pytest.skip("no folder here refuses this user's files")


def test_an_unwritable_plot_folder_is_one_line(tmp_path):
    plot = unwritable_folder(tmp_path) / "g1.png"
    out = lrgate("suggest", FROZEN, "--frozen", "--plot", plot)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"lrgate: error: {plot}: cannot write (") and out.stderr.count("\n") == 1


def test_an_unwritable_run_folder_is_one_line_before_prefect_starts(starts_processes, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("name: ro\n")
    run = unwritable_folder(tmp_path) / "run"
    out = lrgate("run", config, "--out", run)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"lrgate: error: {run}: cannot write (") and out.stderr.count("\n") == 1


def test_a_full_disk_under_standard_output_is_one_line():
    # /dev/full refuses every write with ENOSPC, as a full disk does.
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [LRGATE, "suggest", FROZEN, "--frozen", "--json"], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert out.returncode == 1 and "Traceback" not in out.stderr and "Exception ignored" not in out.stderr
    assert out.stderr == (
        "lrgate: error: standard output: cannot write (No space left on device): free some space, "
        "or write to another folder\n"
    )


def test_a_full_disk_under_the_plot_is_one_line(tmp_path):
    # A file size limit makes the disk refuse the plot part way, as a full one does (EFBIG instead of ENOSPC).
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    plot = tmp_path / "g1.png"
    out = subprocess.run(
        [LRGATE, "suggest", str(FROZEN), "--frozen", "--plot", str(plot)],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        out.stderr == f"lrgate: error: {plot}: cannot write (File too large): free some space, or write to "
        "another folder\n"
    )
    assert list(tmp_path.iterdir()) == []  # no half plot, no temporary file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reviewer="], "the reviewer is empty"),
        (["--reviewer", "  "], "the reviewer is empty"),
        (["--slice", "-1e-5,1e-4"], "learning rates are positive, got slice -1e-05,0.0001"),
        (["--slice=-1e-5,1e-4"], "learning rates are positive, got slice -1e-05,0.0001"),
        (["--lr", "-1e-3"], "learning rates are positive, got lr -0.001"),
    ],
)
def test_approve_refuses_a_blank_reviewer_and_reads_a_negative_value(args, message):
    # Refused before any server is asked: a blank name used to answer as the OS user, and argparse read
    # "-1e-5,1e-4" as an option ("expected one argument").
    out = lrgate("approve", "00000000-0000-0000-0000-000000000001", *args)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("lrgate: error: ") and message in out.stderr


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

    from lrgate.core.errors import CurveError, WithoutTraceback

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
