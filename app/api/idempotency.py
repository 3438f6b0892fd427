"""The Idempotency-Key header, and how a command's outcome becomes an HTTP answer.

A write's answer is remembered in the command's own transaction (the
service stores what `answer_of` makes), so a repeat with the same key and
body replays it (the same status and JSON document; PostgreSQL's JSONB
keeps the document, not its key order), with `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
from fastapi.responses import Response

from app.api.views import status_body
from app.events.types import Json
from app.service import Idempotency, Outcome, Replayed, VideoState


def idempotency(key: str | None, operation: str, body: Any, status: int) -> Idempotency | None:
    """The service's view of an Idempotency-Key sent with `body`, or None
    without one. `status` is the answer's status when the command succeeds."""
    if key is None:
        return None
    canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    def answer(state: VideoState) -> tuple[int, Json]:
        return status, status_body(state)

    return Idempotency(key=key, fingerprint=fingerprint, answer=answer)


def respond(outcome: Outcome, status: int, headers: dict[str, str] | None = None) -> Response:
    """The HTTP answer to a client command: `status` and the new state, or a
    replay. Written by orjson, in C: the request is the hottest write."""
    if isinstance(outcome, Replayed):
        headers = {**(headers or {}), "Idempotent-Replayed": "true"}
        return json_response(outcome.body, outcome.status, headers)
    return json_response(status_body(outcome), status, headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON, by orjson, with no response model to validate against:
    the hot routes answer plain dicts that `app/api/views.py` built and
    `app/api/schemas.py` documents."""
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )
