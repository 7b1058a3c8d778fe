"""The one place lrgate writes files: atomically, so a crash never leaves half a plot, model or report.

Each writer goes to a temporary file in the target's folder and is renamed over the target only once it
is complete; a failure leaves any earlier file untouched. A write that the disk refuses (full, read-only, no
permission) is an :class:`OutputError` naming the file, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from lrgate.core.errors import LrgateError

# mkstemp creates files 0600; finished outputs get the usual mode (0666 less the umask), read once.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# What the disk answers when it will not take a file: full (or over quota, or over the file size limit),
# read-only, or not ours to write.
_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(LrgateError):
    """A file or folder lrgate must write that the disk refuses: full, read-only, or without permission."""


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a refused write inside the block (full disk, read-only folder, no permission) into an
    :class:`OutputError` that names ``path`` (the target, not a temporary name); any other error passes through."""
    try:
        yield
    except OSError as e:
        if not refused(e):
            raise
        raise OutputError(f"{path}: cannot write ({e.strerror}): free some space, or write to another folder") from None


def refused(e: OSError) -> bool:
    """Whether ``e`` is the disk refusing a write: full, read-only, or no permission."""
    return e.errno in _REFUSED


def file_digest(path: str | os.PathLike) -> dict[str, str | int]:
    """``{"sha256", "size"}`` of a file: what a stage records of each file it writes, so a resume can tell a
    file that changed (truncated, corrupted) since."""
    with open(path, "rb") as f:
        return {"sha256": hashlib.file_digest(f, "sha256").hexdigest(), "size": os.fstat(f.fileno()).st_size}


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit, fsync it and rename it to ``path``.

    Raises :class:`OutputError` when the disk refuses the file (full, read-only, no permission).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def write_atomic(path: str | os.PathLike, write: Callable[[IO], object], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file and move it to ``path``; return ``path``."""
    with atomic_file(path, mode) as f:
        write(f)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text), mode="w")
