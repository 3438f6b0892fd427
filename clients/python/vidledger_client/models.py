"""The API's resources as pydantic models, field for field as the server's
OpenAPI names them (a test compares them with `/openapi.json`).

Times are `datetime`s, aware, in UTC. Fields the server adds later are kept
(`extra="allow"`): the API only ever adds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

VideoStatusName = Literal["none", "pending", "processing", "completed", "failed", "cancelled"]

#: Where a video's life ends: `wait` returns or raises at these.
FINAL = frozenset({"completed", "failed", "cancelled", "none"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class VideoError(Model):
    code: str
    message: str
    retryable: bool


class VideoStatus(Model):
    img_name: str
    source_type: str | None
    generator: str | None
    has_video: bool
    video_status: VideoStatusName
    video_filename: str | None
    video_url: str | None
    prompt: str | None
    generation: int
    attempts: int
    error: VideoError | None
    cancel_requested: bool
    progress: float | None
    queued_seconds: float | None
    generation_seconds: float | None
    not_before: datetime | None
    requested_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime | None
    version: int


class HasVideo(Model):
    img_name: str
    has_video: bool


class Transition(Model):
    version: int
    event_id: str
    event_type: str
    schema_version: int
    from_status: VideoStatusName
    to_status: VideoStatusName
    occurred_at: datetime
    actor: str
    reason: str | None
    correlation_id: str | None
    data: dict[str, Any]


class Event(Transition):
    img_name: str
    #: Where this event sits in the global log: pass it as `after=` to read on.
    cursor: str


class Task(Model):
    img_name: str
    source_type: str | None
    generator: str
    prompt: str | None
    params: dict[str, Any]
    generation: int
    attempt: int
    lease_token: str
    lease_expires_at: datetime


class Heartbeat(Model):
    lease_expires_at: datetime
    cancel_requested: bool


class GeneratorInfo(Model):
    name: str
    kind: str
    default: bool


class GeneratorQueue(Model):
    depth: int
    due: int
    oldest_pending_age_seconds: float | None


class Stats(Model):
    by_status: dict[str, int]
    by_source_type: dict[str, dict[str, int]]
    by_generator: dict[str, dict[str, int]]
    total: int
    queue_depth: int
    due: int
    processing: int
    oldest_pending_age_seconds: float | None
    queue_by_generator: dict[str, GeneratorQueue]
    failures_by_generator: dict[str, dict[str, int]]


class Me(Model):
    name: str
    role: Literal["read", "write", "worker", "admin"]
    permissions: list[str]
    open: bool


class Endpoint(Model):
    id: str
    url: str
    description: str | None
    event_types: list[str] | None
    source_types: list[str] | None
    state: Literal["enabled", "disabled"]
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


class EndpointCreated(Endpoint):
    #: `whsec_…`: shown only at creation (and at rotation).
    secret: str


class Delivery(Model):
    id: int
    endpoint_id: str
    event_id: str
    event_type: str
    img_name: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    last_response: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookMessage(Model):
    """What a webhook delivery POSTs: `type`, `timestamp` and the Event."""

    type: str
    timestamp: datetime
    #: The Event as `/v1/events` shows it; a `webhook.test` message carries
    #: `{"endpoint_id"}` instead.
    data: dict[str, Any]

    @property
    def event(self) -> Event | None:
        """`data` as an Event (None for a `webhook.test` message)."""
        return None if self.type == "webhook.test" else Event.model_validate(self.data)
