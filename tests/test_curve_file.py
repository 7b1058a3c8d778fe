from __future__ import annotations

import numpy as np
import pytest

from lrgate.core.curve_file import read_curve_csv, write_curve_csv
from lrgate.core.errors import CurveFileError


def test_round_trip_keeps_full_precision(tmp_path):
    lrs, losses = np.logspace(-7, 1, 30), np.random.default_rng(0).random(30)
    losses[-1] = np.nan
    path = write_curve_csv(tmp_path / "c.csv", lrs, losses)
    got_lrs, got_losses = read_curve_csv(path)
    assert np.array_equal(got_lrs, lrs)
    assert np.array_equal(got_losses, losses, equal_nan=True)


def test_extra_columns_and_spaces_are_fine(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("iteration, lr ,loss\n0, 1e-7 , 2.5\n1,2e-7,2.4\n")
    lrs, losses = read_curve_csv(path)
    assert lrs.tolist() == [1e-7, 2e-7] and losses.tolist() == [2.5, 2.4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr,los\n1,2\n", r"missing column\(s\) loss"),
        ("1e-7,2.5\n2e-7,2.4\n", "expected a header row 'lr,loss'"),
        ("", "found nothing"),
        ("lr,loss\n", "no data rows"),
        ("lr,loss\n1e-7,2.5\n2e-7,abc\n", "line 3: loss 'abc' is not a number"),
        ("lr,loss\n1e-7\n", "line 2: loss '' is not a number"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(CurveFileError, match=message):
        read_curve_csv(path)


def test_missing_file_and_folder_and_binary(tmp_path):
    with pytest.raises(CurveFileError, match="no such file"):
        read_curve_csv(tmp_path / "nope.csv")
    with pytest.raises(CurveFileError, match="is a folder"):
        read_curve_csv(tmp_path)
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(CurveFileError, match="not a text file"):
        read_curve_csv(tmp_path / "b.csv")


def test_a_byte_order_mark_is_read_past(tmp_path):
    # Spreadsheet programs save "CSV UTF-8" with a BOM, which used to hide the lr column ("found lr,loss").
    path = tmp_path / "c.csv"
    path.write_bytes("lr,loss\n1e-7,2.5\n2e-7,2.4\n".encode("utf-8-sig"))
    lrs, losses = read_curve_csv(path)
    assert lrs.tolist() == [1e-7, 2e-7] and losses.tolist() == [2.5, 2.4]


@pytest.mark.parametrize("lr", ["-1e-07", "0", "nan", "inf"])
def test_an_lr_that_is_not_positive_is_named_as_a_plain_number(tmp_path, lr):
    path = tmp_path / "c.csv"
    path.write_text(f"lr,loss\n1e-8,2.5\n{lr},2.4\n")
    with pytest.raises(CurveFileError) as e:
        read_curve_csv(path)
    assert str(e.value) == f"{path}, line 3: lr {float(lr):g} is not a finite, positive number"
