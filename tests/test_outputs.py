from __future__ import annotations

import os
import stat

import pytest

from lrgate.core.outputs import write_atomic, write_text


def test_a_failed_write_leaves_the_earlier_file_untouched(tmp_path):
    target = write_text(tmp_path / "report.md", "good")

    def crash(f):
        f.write("half a rep")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(target, crash, mode="w")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["report.md"]


def test_outputs_get_the_usual_file_mode(tmp_path):
    mode = stat.S_IMODE(write_text(tmp_path / "x.txt", "x").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_missing_folders_are_created(tmp_path):
    assert write_text(tmp_path / "a" / "b" / "c.txt", "x").read_text() == "x"
