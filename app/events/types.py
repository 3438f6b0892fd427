"""Event names, schema versions and payload builders.

A stored event is identified by its explicit name and integer
`schema_version`, never by a Python path: classes get renamed, the log is
forever. Payloads are plain JSON objects; the builders here are the only
place that writes their shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.lifecycle import EventType, Status

#: The schema version each event type is written with today.
CURRENT_SCHEMA: dict[EventType, int] = {t: 1 for t in EventType} | {EventType.REQUESTED: 3}

#: The generator of every video requested before generators were named (v1, v2).
FIRST_GENERATOR = "kenburns"

#: Generation settings a VideoRequested v2 carries when the client sends none.
DEFAULT_PARAMS: dict[str, Any] = {"duration_seconds": 3.0, "fps": 24, "max_size": 1280}

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event decided by the service, about to be appended."""

    event_type: EventType
    from_status: Status
    to_status: Status
    data: Json
    actor: str
    reason: str | None = None
    correlation_id: str | None = None
    idempotency_key: str | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def schema_version(self) -> int:
        return CURRENT_SCHEMA[self.event_type]


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as read back from the log, its payload already upcast."""

    position: int
    event_id: uuid.UUID
    img_name: str
    version: int
    event_type: EventType
    schema_version: int
    from_status: Status
    to_status: Status
    data: Json
    actor: str
    reason: str | None
    correlation_id: str | None
    idempotency_key: str | None
    recorded_at: datetime
    tx_id: int | None = None


def error_payload(code: str, message: str, retryable: bool) -> Json:
    return {"code": code, "message": message, "retryable": retryable}


def requested(
    source_type: str, prompt: str | None, params: Json, regenerate: bool, generator: str
) -> Json:
    return {
        "source_type": source_type,
        "generator": generator,
        "prompt": prompt,
        "params": {**DEFAULT_PARAMS, **params},
        "regenerate": regenerate,
    }


def processing_started(worker_id: str, lease_expires_at: datetime, attempt: int) -> Json:
    """The lease token itself stays out of the log: every reader can see events,
    and a token is the right to write a worker's result."""
    return {
        "worker_id": worker_id,
        "lease_expires_at": lease_expires_at.isoformat(),
        "attempt": attempt,
    }


def completed(video_filename: str, metadata: Json) -> Json:
    return {"video_filename": video_filename, "metadata": metadata}


def retry_scheduled(error: Json | None, not_before: datetime, attempt: int, released: bool) -> Json:
    """`released` marks a task handed back on shutdown: it uses no attempt."""
    return {
        "error": error,
        "not_before": not_before.isoformat(),
        "attempt": attempt,
        "released": released,
    }


def failed(error: Json, attempt: int) -> Json:
    return {"error": error, "attempt": attempt}


def deleted(video_filename: str | None) -> Json:
    return {"video_filename": video_filename}
