"""Plain-JSON shapes of the resources the API answers with, made from domain results.

Idempotent answers are remembered in these shapes and replayed as they
are: a replay is the first answer's JSON document (on PostgreSQL, JSONB
keeps the document but not the order of its keys). The pydantic models in
`app/api/schemas.py` document the same shapes.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote

from app.events.types import Json, RecordedEvent
from app.lifecycle import Status
from app.service.results import FeedEvent, VideoState
from app.timestamps import rfc3339

_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def status_path(img_name: str) -> str:
    """The URL path of an image's status resource (names may hold any character)."""
    # Most names need no escaping, and a match is far cheaper than quote():
    # a batch read builds a thousand of these.
    if _UNRESERVED.fullmatch(img_name):
        return f"/v1/videos/{img_name}"
    return f"/v1/videos/{quote(img_name, safe='')}"


def iso(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def status_body(state: VideoState) -> Json:
    row = state.row
    error = None
    if row.error_code is not None:
        error = {
            "code": row.error_code,
            "message": row.error_message,
            "retryable": bool(row.error_retryable),
        }
    processing = row.video_status is Status.PROCESSING
    return {
        "img_name": row.img_name,
        "source_type": row.source_type,
        "generator": row.generator,
        "has_video": row.has_video,
        "video_status": row.video_status.value,
        "video_filename": row.video_filename if row.has_video else None,
        "video_url": f"{status_path(row.img_name)}/content" if row.has_video else None,
        "prompt": row.prompt,
        "generation": row.generation,
        "attempts": row.attempts,
        "error": error,
        "cancel_requested": row.cancel_requested,
        "progress": (state.progress if state.progress is not None else 0.0) if processing else None,
        "queued_seconds": row.queued_seconds,
        "generation_seconds": row.generation_seconds,
        "not_before": iso(row.not_before) if row.video_status is Status.PENDING else None,
        "requested_at": iso(row.requested_at),
        "started_at": iso(row.started_at),
        "completed_at": iso(row.completed_at),
        "updated_at": iso(row.updated_at),
        "version": row.version,
    }


def transition_body(ev: RecordedEvent) -> Json:
    return {
        "version": ev.version,
        "event_id": str(ev.event_id),
        "event_type": ev.event_type.value,
        "schema_version": ev.schema_version,
        "from_status": ev.from_status.value,
        "to_status": ev.to_status.value,
        "occurred_at": iso(ev.recorded_at),
        "actor": ev.actor,
        "reason": ev.reason,
        "correlation_id": ev.correlation_id,
        "data": ev.data,
    }


def event_body(item: FeedEvent) -> Json:
    return {"img_name": item.event.img_name, "cursor": item.cursor, **transition_body(item.event)}
