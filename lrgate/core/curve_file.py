"""Range-test curves as CSV files with a header row ``lr,loss`` (extra columns are ignored).

Checked where they enter: a missing file, a missing column, a value that is not a number or an lr that is
not positive is a :class:`~lrgate.core.errors.CurveFileError` naming the file, the line and the column. ``nan``
and ``inf`` losses are accepted (a diverged test records them); the analysis cuts the curve there. A UTF-8
byte-order mark (as spreadsheet programs write) is read past.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lrgate.core.errors import CurveFileError
from lrgate.core.outputs import write_atomic

COLUMNS = ("lr", "loss")


def read_curve_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(lrs, losses)`` from a CSV file with columns ``lr`` and ``loss``."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of "lr"
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise CurveFileError(
                    f"{path}: missing column(s) {', '.join(missing)}: expected a header row 'lr,loss', "
                    f"found {','.join(header) or 'nothing'}"
                )
            reader.fieldnames = header
            lrs, losses = [], []
            for row in reader:
                values = []
                for column in COLUMNS:
                    text = (row.get(column) or "").strip()
                    try:
                        values.append(float(text))
                    except ValueError:
                        raise CurveFileError(
                            f"{path}, line {reader.line_num}: {column} {text!r} is not a number"
                        ) from None
                if not (np.isfinite(values[0]) and values[0] > 0):
                    raise CurveFileError(
                        f"{path}, line {reader.line_num}: lr {values[0]:g} is not a finite, positive number"
                    )
                lrs.append(values[0])
                losses.append(values[1])
    except FileNotFoundError:
        raise CurveFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CurveFileError(f"{path}: is a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise CurveFileError(f"{path}: not a text file (expected CSV with columns lr,loss)") from None
    except csv.Error as e:
        raise CurveFileError(f"{path}: not a readable CSV file ({e})") from None
    if not lrs:
        raise CurveFileError(f"{path}: no data rows under the header 'lr,loss'")
    return np.array(lrs), np.array(losses)


def write_curve_csv(path: str | os.PathLike, lrs: Sequence[float], losses: Sequence[float]) -> Path:
    """Write a curve as ``lr,loss`` rows, atomically (full float precision)."""

    def write(f) -> None:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(COLUMNS)
        out.writerows((repr(float(lr)), repr(float(loss))) for lr, loss in zip(lrs, losses, strict=True))

    return write_atomic(path, write, mode="w")
