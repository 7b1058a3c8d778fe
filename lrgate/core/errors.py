"""The few exceptions lrgate raises on purpose, each with a message meant for a person.

The CLI turns any of them into one line on stderr and a non-zero exit; anything else is a bug.
"""

from __future__ import annotations

import logging


class LrgateError(Exception):
    """Base class: input that lrgate refuses, with a message that says what is wrong and how to fix it."""


class CurveError(LrgateError, ValueError):
    """An LR range-test curve (or an analysis parameter) that cannot be read into a learning rate."""


class ShortCurveError(CurveError):
    """Too few finite points for the extrema filter: a range test that stopped (or diverged) too soon."""


class CurveFileError(LrgateError):
    """A curve file that is missing or malformed."""


class LearnerStateError(LrgateError):
    """A Learner whose freeze state cannot be used for a range test (for example: every group frozen)."""


class Rejected(LrgateError):
    """A gate's decision stopped the run (a reviewer's rejection, or ``on_timeout: reject``): the run ends
    ``Cancelled`` with this as its result. A decision, not an error: the flow logs it once, itself."""


class WithoutTraceback(logging.Filter):
    """Keeps a log record whose exception is an :class:`LrgateError`, but drops its traceback: the message says
    what is wrong, and the stack through Prefect's engine says nothing more. Anything else keeps its traceback.

    A record whose exception is :class:`Rejected` is dropped: a deployed run's engine reads the ``Cancelled``
    state's result, raises it and logs "Engine execution exited with unexpected exception" at ERROR, about a
    rejection the flow has already logged (and Prefect's "Finished in state Cancelled(...)" names again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Rejected):
            return False
        if record.exc_info and isinstance(record.exc_info[1], LrgateError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_run_tracebacks() -> None:
    """Install :class:`WithoutTraceback` on Prefect's flow-run and task-run loggers (once; the flows call it)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithoutTraceback) for f in logger.filters):
            logger.addFilter(WithoutTraceback())
