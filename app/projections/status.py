"""The current-status row of one image and the pure fold that builds it.

`apply(row, event) -> row` is the only definition of what an event does to
the status table. The inline projector and every rebuild call it, so they
cannot disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from app.events.types import Json, RecordedEvent
from app.lifecycle import EventType, Status

NAME = "image_video_status"
#: Bump when the fold or the table's columns change; startup rebuilds.
VERSION = 3  # v2: queued_seconds and generation_seconds; v3: generator


@dataclass(slots=True)
class StatusRow:
    img_name: str
    has_video: bool = False
    video_status: Status = Status.NONE
    video_filename: str | None = None
    source_type: str | None = None
    prompt: str | None = None
    params: Json | None = None
    generation: int = 0
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    error_retryable: bool | None = None
    cancel_requested: bool = False
    not_before: datetime | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0
    last_position: int = 0
    #: Request -> first processing start, for the current generation.
    queued_seconds: float | None = None
    #: Processing start -> completion, for the last completed video.
    generation_seconds: float | None = None
    #: The generator of the current generation (None before any request).
    generator: str | None = None

    def as_values(self) -> dict[str, Any]:
        """Column values for the table."""
        values = {name: getattr(self, name) for name in COLUMNS}
        values["video_status"] = self.video_status.value
        return values


#: Table columns, in the order of StatusRow's fields.
COLUMNS: list[str] = list(StatusRow.__dataclass_fields__)


def row_from_mapping(m: Any) -> StatusRow:
    """A StatusRow from a table row mapping."""
    values = {name: m[name] for name in COLUMNS}
    values["video_status"] = Status(values["video_status"])
    return StatusRow(**values)


#: Each status by its column value: a dict lookup, where calling the enum
#: costs a batch of 1,000 statuses about a millisecond.
_STATUS_OF: dict[str, Status] = {status.value: status for status in Status}


def row_from_values(values: Sequence[Any]) -> StatusRow:
    """A StatusRow from a table row's values in `COLUMNS` order: positional,
    for reads of many rows, where building a dict per row showed."""
    row = StatusRow(*values)
    row.video_status = _STATUS_OF[row.video_status]
    return row


def _set_error(row: StatusRow, error: Json | None) -> None:
    if error is None:
        row.error_code = row.error_message = row.error_retryable = None
    else:
        row.error_code = error["code"]
        row.error_message = error["message"]
        row.error_retryable = error["retryable"]


def _seconds(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 6)


class FoldEvent(Protocol):
    """What the fold reads of an event (a `RecordedEvent` has all of it)."""

    @property
    def img_name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def event_type(self) -> EventType: ...
    @property
    def to_status(self) -> Status: ...
    @property
    def data(self) -> Json: ...
    @property
    def recorded_at(self) -> datetime: ...


def apply(row: StatusRow | None, event: FoldEvent) -> StatusRow:
    """The row after `event`; `row` is None before an image's first event.

    Pure: the given row is not modified.
    """
    new = StatusRow(img_name=event.img_name) if row is None else copy.copy(row)
    apply_into(new, event)
    return new


def apply_into(new: StatusRow, event: FoldEvent) -> None:
    """`apply`, writing into `new` in place: for a replay that owns its rows
    (a rebuild), where a copy per event would be most of the cost."""
    data = event.data
    at = event.recorded_at
    t = event.event_type
    if t is EventType.REQUESTED:
        new.source_type = data["source_type"]
        new.generator = data["generator"]
        new.prompt = data["prompt"]
        new.params = data["params"]
        new.generation += 1
        new.attempts = 0
        _set_error(new, None)
        new.cancel_requested = False
        new.not_before = at
        new.requested_at = at
        new.started_at = None
        new.queued_seconds = None
    elif t is EventType.PROCESSING_STARTED:
        new.attempts = data["attempt"]
        new.started_at = at
        new.not_before = None
        if new.queued_seconds is None and new.requested_at is not None:
            new.queued_seconds = _seconds(new.requested_at, at)
    elif t is EventType.COMPLETED:
        new.has_video = True
        new.video_filename = data["video_filename"]
        new.completed_at = at
        if new.started_at is not None:
            new.generation_seconds = _seconds(new.started_at, at)
        new.cancel_requested = False
        _set_error(new, None)
    elif t is EventType.RETRY_SCHEDULED:
        if data.get("released"):
            new.attempts = max(0, new.attempts - 1)
        else:
            _set_error(new, data["error"])
        new.not_before = datetime.fromisoformat(data["not_before"])
        new.cancel_requested = False
    elif t is EventType.FAILED:
        _set_error(new, data["error"])
        new.not_before = None
        new.cancel_requested = False
    elif t is EventType.CANCEL_REQUESTED:
        new.cancel_requested = True
    elif t is EventType.CANCELLED:
        new.cancel_requested = False
        new.not_before = None
    elif t is EventType.RETRY_REQUESTED:
        new.attempts = 0
        _set_error(new, None)
        new.not_before = at
    elif t is EventType.DELETED:
        new.has_video = False
        new.video_filename = None
        new.completed_at = None
        new.generation_seconds = None
        new.cancel_requested = False
        new.not_before = None
        _set_error(new, None)
    new.video_status = event.to_status
    new.updated_at = at
    new.version = event.version
    new.last_position = event.position


def fold(events: list[RecordedEvent], img_name: str) -> StatusRow:
    """The row of `img_name` after all of `events` (its stream, in order)."""
    row: StatusRow | None = None
    for ev in events:
        row = apply(row, ev)
    return row if row is not None else StatusRow(img_name=img_name)
