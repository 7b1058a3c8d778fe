"""What passes between a gate's range test, its decision and the stage after it: typed, frozen records.

    GateRecord  the range test of one gate: its suggestion (or why there is none), plot, curve and data files
    Decision    what the gate decided: who, when, by which policy, and the value the next stage trains with

Each has a ``.value``: an lr, or a slice as ``[lo, hi]`` (the stage after an ``unfreeze`` / ``freeze_to`` trains a
slice), or None (a range test that could not be read; a rejection). On disk (a stage's persisted result,
``gate-<name>/decision.json``, ``summary.json``) a record is the same JSON object as before plus
``schema_version``. A file without a version was written by lrgate 0.3/0.4 and is read when it has what this
version needs; one from a newer lrgate, or one that lacks a field, is refused with a line that says which.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from lrgate.core.errors import CurveError, LrgateError

SCHEMA_VERSION = 1

# An lr, or a slice's ends [lo, hi].
Value = float | list[float]


def top_lr(value: Value) -> float:
    """The lr a value trains its last group (the head) with: the lr, or a slice's upper end."""
    return value[1] if isinstance(value, list) else value


class RecordError(LrgateError):
    """A gate record or decision on disk that this lrgate cannot read (another version, a missing field)."""


def format_value(v: Value | None) -> str:
    """An lr (``1.2e-03``), a slice (``slice(1.0e-05, 1.0e-03)``) or ``none``, as reports and artifacts show it."""
    if v is None:
        return "none"
    return f"slice({v[0]:.2e}, {v[1]:.2e})" if isinstance(v, list | tuple) else f"{v:.2e}"


class _Record(BaseModel):
    """Frozen; unknown fields are kept (a later lrgate may add some) and written back. The fields named in
    ``OMIT_WHEN_NONE`` are left out of the JSON while they are None (as earlier lrgates wrote them)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    schema_version: int = SCHEMA_VERSION

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ValueError(f"schema_version {version!r} is not a whole number")
        if version is not None and version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this lrgate reads ({SCHEMA_VERSION})")
        return data

    @classmethod
    def read(cls, data: Any, where: str = "") -> Any:
        """The record from its JSON object (or the record itself); :class:`RecordError` naming what is wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "the record"
            first["msg"] = first["msg"].removeprefix("Value error, ")
            origin = f"{where}: " if where else ""
            raise RecordError(
                f"{origin}not a {cls.__name__} this lrgate can read ({field}: {first['msg']}); it was written by "
                "another lrgate version: start a new run"
            ) from None

    def to_json(self, **fields: Any) -> dict[str, Any]:
        """The record's JSON object, as written to disk (``include=`` / ``exclude=`` as pydantic's)."""
        return self.model_dump(mode="json", **fields)

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None or k not in self.OMIT_WHEN_NONE}


class SuggestionRecord(_Record):
    """A suggestion as ``lrgate suggest --json`` prints it (:meth:`lrgate.core.suggest.Suggestion.to_dict`)."""

    OMIT_WHEN_NONE = frozenset({"schema_version", "race"})  # the contract has "race" only after a race

    schema_version: int | None = None  # the CLI's JSON contract has no version: it is the suggestion's own shape

    state: str
    method: str
    params: dict[str, Any]
    lr: float
    slice: list[float] | None
    candidates: dict[str, list[float]]
    min_loss_lr_div10: float
    tested_range: list[float]
    warnings: list[str]
    race: dict[str, Any] | None = None

    @property
    def value(self) -> Value:
        """The lr, or the slice ``[lo, hi]``."""
        return self.slice if self.slice is not None else self.lr


class GateRecord(_Record):
    """The range test of one gate, as the ``lr-suggest`` stage wrote it.

    Always: the Learner's ``state``, whether the stage after the gate ``takes_slice``, the ``tested_range`` (with the
    race's candidates, the bounds of any override: :attr:`override_range`), the recorded ``curve_csv`` and the review
    ``plot``. With a suggestion: its ``choices`` table and ``frame_csv`` (the data behind the plot). Without (the
    curve could not be read): the ``error``, so a person can still override or reject.
    """

    gate: Literal["frozen", "unfrozen"]
    suggestion: SuggestionRecord | None
    state: str
    takes_slice: bool
    tested_range: tuple[float, float]
    plot: str
    curve_csv: str
    seconds: float
    frame_csv: str | None = None
    choices: str | None = None
    error: str | None = None
    gpu_slot: dict[str, Any] | None = None
    artifact_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_suggestion(cls, data: Any) -> Any:
        # With a suggestion these three are its own (lrgate 0.4.0 kept them on the record only when there was none)
        s = data.get("suggestion") if isinstance(data, dict) else None
        if isinstance(s, SuggestionRecord):
            s = s.model_dump()
        if isinstance(s, dict):
            data = {
                "state": s.get("state"),
                "takes_slice": s.get("slice") is not None,
                "tested_range": s.get("tested_range"),
                **data,
            }
        return data

    @model_validator(mode="after")
    def _readable_or_why(self) -> GateRecord:
        if self.suggestion is None and self.error is None:
            raise ValueError("a range test without a suggestion needs the error that says why")
        return self

    @classmethod
    def read(cls, data: Any, where: str = "") -> GateRecord:
        if isinstance(data, dict) and data.get("suggestion") is None and "tested_range" not in data:
            # lrgate < 0.3 kept an unreadable range test without the tested range a form needs
            why = f"{data.get('error')} (range test recorded by an older lrgate: start a new run)"
            raise CurveError(f"gate {data.get('gate')}: {why}")
        return super().read(data, where)

    @property
    def value(self) -> Value | None:
        """The suggested lr or slice; None when the curve could not be read."""
        return None if self.suggestion is None else self.suggestion.value

    @property
    def override_range(self) -> tuple[float, float]:
        """The bounds of a typed override: the lrs the range test tried, widened to the race's candidates (which
        reach past the test's last lr: :data:`~lrgate.core.race_plan.REACH_DECADES` before unfreeze, and after it
        a decade above the frozen stage's lr, wherever that lies: :data:`~lrgate.core.race_plan.HEAD_SPAN_DECADES`)."""
        lo, hi = self.tested_range
        race = self.suggestion.race if self.suggestion is not None else None
        tried = [c for c in (race or {}).get("candidates", []) if isinstance(c, float | int) and c > 0]
        return min([lo, *tried]), max([hi, *tried])


Action = Literal["approve", "override", "reject"]


class Decision(_Record):
    """What a gate decided. ``value`` is what the next stage trains with (None: rejected); ``source`` says where it
    came from (suggestion, override, pinned lr, pinned slice, reject); ``suggested`` is the range test's
    suggestion as the decision saw it; ``guard`` the guard's reason when it escalated an ``auto`` gate."""

    OMIT_WHEN_NONE = frozenset({"guard"})  # as lrgate 0.4.0 wrote it: only on a decision the guard escalated

    gate: str
    policy: str
    action: Action
    reviewer: str
    at: str
    reason: str
    source: str
    value: Value | None
    suggested: SuggestionRecord | None
    guard: str | None = None

    @property
    def rejected(self) -> bool:
        return self.value is None
