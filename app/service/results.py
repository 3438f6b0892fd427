"""What use cases hand back: domain results, never HTTP answers.

The edges turn them into JSON (`app/api/views.py`), terminal output or
worker actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from app.events.types import Json, RecordedEvent
from app.projections.status import StatusRow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VideoState:
    """An image's projected row plus the live, operational bits of its lease."""

    row: StatusRow
    progress: float | None = None


@dataclass(frozen=True)
class Replayed:
    """The remembered first answer to a write repeated with the same Idempotency-Key."""

    status: int
    body: Json


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, the fingerprint of the request it came with, and how
    the caller answers a result (what is remembered, in the command's
    transaction, and replayed as it was)."""

    key: str
    fingerprint: str
    answer: Callable[[VideoState], tuple[int, Json]]


#: A client command's outcome: the new state, or the replay of a first answer.
Outcome = VideoState | Replayed


@dataclass(frozen=True)
class Task:
    img_name: str
    source_type: str | None
    generator: str
    prompt: str | None
    params: Json
    generation: int
    attempt: int
    lease_token: str
    lease_expires_at: datetime


@dataclass(frozen=True)
class Heartbeat:
    lease_expires_at: datetime
    cancel_requested: bool


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event of the global feed, with the cursor just past it."""

    event: RecordedEvent
    cursor: str
