"""API models, named for their role. They validate input and document output.

Hot read paths return the plain dicts of `app/api/views.py`; these models
describe the same shapes for OpenAPI.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.naming import GENERATOR_RE, SOURCE_TYPE_RE, check_img_name

PARAMS_MAX_BYTES = 16 * 1024

ImgName = Annotated[StrictStr, AfterValidator(check_img_name)]
SourceType = Annotated[StrictStr, Field(pattern=SOURCE_TYPE_RE.pattern)]
GeneratorName = Annotated[StrictStr, Field(pattern=GENERATOR_RE.pattern)]


def storable(value: str) -> str:
    """Text any database can keep: no NUL (PostgreSQL's text and JSONB refuse
    it) and no lone surrogate (a JSON "\\ud800" decodes to one; no UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Reason = Annotated[StrictStr, Field(max_length=2000), AfterValidator(storable)]
Prompt = Annotated[StrictStr, Field(max_length=2000), AfterValidator(storable)]
WorkerId = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")]
LeaseToken = Annotated[StrictStr, Field(min_length=1, max_length=64)]
VideoStatusName = Literal["none", "pending", "processing", "completed", "failed", "cancelled"]


def _small_params(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    dumped = json.dumps(value)
    if len(dumped) > PARAMS_MAX_BYTES:
        raise ValueError(f"params must be at most {PARAMS_MAX_BYTES} bytes of JSON")
    if "\\u0000" in dumped:
        raise ValueError("params must not contain NUL characters (JSONB refuses them)")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A JSON "\ud800" decodes to a lone surrogate, which no database can store.
        raise ValueError("params must be valid Unicode (no lone surrogates)") from None
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoRequestIn(_In):
    img_name: ImgName
    source_type: SourceType
    prompt: Prompt | None = None
    params: Annotated[dict[str, Any] | None, AfterValidator(_small_params)] = None
    regenerate: StrictBool = False
    generator: GeneratorName | None = Field(
        None, description="a configured generator (GET /v1/generators); default: the default one"
    )


class ReasonIn(_In):
    reason: Reason | None = None


class StatusAsOf(BaseModel):
    """`?at=` / `?version=` of a status read: the status as it was then.

    The route parses these itself, and only when a query string is sent:
    declared as FastAPI query parameters they would be validated on every
    read, the hottest route. `as_of_parameters()` documents them the same way.
    """

    at: datetime | None = Field(None, description="RFC 3339 time")
    version: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None


def as_of_parameters() -> list[dict[str, Any]]:
    """OpenAPI query parameters for `StatusAsOf`, as FastAPI would declare them."""
    params = []
    for name, prop in StatusAsOf.model_json_schema()["properties"].items():
        schema = {k: v for k, v in prop.items() if k != "default"}
        param = {"name": name, "in": "query", "required": False, "schema": schema}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


class BatchStatusIn(_In):
    img_names: Annotated[list[ImgName], Field(min_length=1, max_length=1000)]


class ClaimIn(_In):
    worker_id: WorkerId
    lease_seconds: Annotated[int, Field(ge=5, le=3600, strict=True)] | None = None
    source_types: Annotated[list[SourceType], Field(max_length=50)] | None = None
    generators: Annotated[list[GeneratorName], Field(min_length=1, max_length=50)] | None = Field(
        None, description="claim only these generators' videos; default: any"
    )


class HeartbeatIn(_In):
    lease_token: LeaseToken
    progress: Annotated[float, Field(ge=0, le=1)] | None = None


class LeaseIn(_In):
    lease_token: LeaseToken


class CompleteIn(_In):
    lease_token: LeaseToken
    video_filename: Annotated[
        StrictStr, Field(min_length=1, max_length=600), AfterValidator(storable)
    ]
    metadata: Annotated[dict[str, Any] | None, AfterValidator(_small_params)] = None


class FailIn(_In):
    lease_token: LeaseToken
    error_code: Annotated[
        StrictStr, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=100)
    ]
    error_message: Annotated[
        StrictStr, Field(min_length=1, max_length=2000), AfterValidator(storable)
    ]
    retryable: StrictBool


class VideoError(BaseModel):
    code: str
    message: str
    retryable: bool


class VideoStatus(BaseModel):
    img_name: str
    source_type: str | None
    generator: str | None = Field(description="the current generation's generator")
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
    not_before: str | None = Field(description="when a pending video becomes due; else null")
    requested_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str | None
    version: int


class HasVideo(BaseModel):
    img_name: str
    has_video: bool


class BatchStatusOut(BaseModel):
    items: list[VideoStatus]


class VideoPage(BaseModel):
    items: list[VideoStatus]
    next_cursor: str | None


class Transition(BaseModel):
    version: int
    event_id: str
    event_type: str
    schema_version: int
    from_status: VideoStatusName
    to_status: VideoStatusName
    occurred_at: str
    actor: str
    reason: str | None
    correlation_id: str | None
    data: dict[str, Any]


class HistoryPage(BaseModel):
    img_name: str
    items: list[Transition]
    next_cursor: str | None


class Event(Transition):
    img_name: str
    cursor: str


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str | None = Field(description="where to continue; null only for an empty log")


class GeneratorQueue(BaseModel):
    depth: int = Field(description="pending videos of this generator")
    due: int = Field(description="of those, due now")
    oldest_pending_age_seconds: float | None


class Stats(BaseModel):
    by_status: dict[str, int]
    by_source_type: dict[str, dict[str, int]]
    by_generator: dict[str, dict[str, int]] = Field(description="counts by status, per generator")
    total: int
    queue_depth: int
    due: int
    processing: int
    oldest_pending_age_seconds: float | None
    queue_by_generator: dict[str, GeneratorQueue]
    failures_by_generator: dict[str, dict[str, int]] = Field(
        description="failed videos per generator, by error code"
    )


class Task(BaseModel):
    img_name: str
    source_type: str | None
    generator: str
    prompt: str | None
    params: dict[str, Any]
    generation: int
    attempt: int
    lease_token: str
    lease_expires_at: str


class GeneratorInfo(BaseModel):
    name: str
    kind: str = Field(description="kenburns, cog, command, or a plugin's kind")
    default: bool = Field(description="what a request that names no generator gets")


class GeneratorList(BaseModel):
    items: list[GeneratorInfo]


class HeartbeatOut(BaseModel):
    lease_expires_at: str
    cancel_requested: bool


class ProjectionInfo(BaseModel):
    name: str
    version: int
    expected_version: int
    state: Literal["ok", "stale", "rebuilding"]
    rows: int
    last_position: int
    built_at: str | None


class ProjectionList(BaseModel):
    items: list[ProjectionInfo]


class VerifyResult(BaseModel):
    ok: bool
    checked: int = Field(description="images compared")
    events: int = Field(description="events folded")
    differences: list[dict[str, Any]] = Field(
        description="each differing image: {img_name, columns: {name: {expected, actual}}}; "
        "at most 1,000 listed"
    )


class Me(BaseModel):
    name: str = Field(description="the key's name, the actor on the events it causes")
    role: Literal["read", "write", "worker", "admin"]
    permissions: list[str] = Field(description="what the role may do: read, write, worker, admin")
    open: bool = Field(description="true when the server runs open (no key exists)")


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class ValidationProblem(Problem):
    errors: list[FieldError]


# --- webhooks ----------------------------------------------------------------------------


def _printable(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


WebhookUrl = Annotated[StrictStr, Field(min_length=8, max_length=2000), AfterValidator(_printable)]
Description = Annotated[StrictStr, Field(max_length=500), AfterValidator(_printable)]
EventTypes = Annotated[list[StrictStr], Field(max_length=20)]
SourceTypes = Annotated[list[SourceType], Field(max_length=50)]


class EndpointIn(_In):
    url: WebhookUrl
    description: Description | None = None
    event_types: EventTypes | None = Field(None, description="default: every event type")
    source_types: SourceTypes | None = Field(None, description="default: every source type")


class EndpointPatch(_In):
    url: WebhookUrl | None = None
    description: Description | None = None
    event_types: EventTypes | None = None
    source_types: SourceTypes | None = None
    state: Literal["enabled", "disabled"] | None = None


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str | None
    event_types: list[str] | None
    source_types: list[str] | None
    state: Literal["enabled", "disabled"]
    disabled_reason: str | None
    created_at: str
    updated_at: str


class EndpointCreated(EndpointOut):
    secret: str = Field(description="whsec_…: shown only here and at rotation")


class EndpointPage(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class SecretOut(BaseModel):
    secret: str


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: str
    event_id: str = Field(description="the webhook-id header: the event's id")
    event_type: str
    img_name: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    last_response: str | None = Field(description="at most 256 bytes of the last answer")
    created_at: str
    delivered_at: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class ReplayIn(_In):
    status: Literal["failed"] | None = None
    since: datetime | None = None
    after: Annotated[StrictStr, Field(max_length=100), AfterValidator(_printable)] | None = None


class Replayed(BaseModel):
    replayed: int
