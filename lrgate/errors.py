"""The few exceptions lrgate raises on purpose, each with a message meant for a person.

The CLI turns any of them into one line on stderr and a non-zero exit; anything else is a bug.
"""


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
