"""/v1/events/stream: the global feed, live, as Server-Sent Events.

Each event goes out as `id: <cursor>`, `event: <event_type>`, `data: <Event
JSON>`, so a client that reconnects with `Last-Event-ID` resumes exactly
after the last event it saw. Readers sleep on the app's `FeedSignal` (woken
by local appends and, on PostgreSQL, by the probe that notices other
processes' appends) and otherwise read the database at most once per
`IDLE_POLL_SECONDS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.api.deps import Queries, Reader
from app.api.errors import responses
from app.api.schemas import SourceType
from app.api.views import event_body
from app.errors import Unavailable, ValidationFailed
from app.events.store import FeedFilter
from app.feed import IDLE_POLL_SECONDS, FeedSignal
from app.lifecycle import EventType
from app.service import Page
from app.service.queries import VideoQueries
from app.service.results import FeedEvent

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["events"])

#: Events read per query. A full page means more is waiting: read on at once.
PAGE_SIZE = 500

#: Keep-alive comment interval unless `app.state.feed_ping_seconds` says otherwise.
DEFAULT_PING_SECONDS = 15.0

LAST_EVENT_ID = "Last-Event-ID"

_STREAM_DOC = {
    200: {
        "description": (
            "An endless `text/event-stream`. Each event has `id` (its cursor; send it "
            "back as `Last-Event-ID` to resume), `event` (the event_type) and `data` "
            "(the Event JSON of `GET /v1/events` items). Comment lines keep the "
            "connection alive while nothing happens."
        ),
        # Before OpenAPI 3.2's itemSchema, the schema of a text/event-stream
        # describes one event: its fields, with `data` the Event as JSON text.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["id", "event", "data"],
                    "properties": {
                        "id": {"type": "string", "description": "the event's cursor"},
                        "event": {"$ref": "#/components/schemas/EventType"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/Event"},
                        },
                    },
                }
            }
        },
    },
    **responses(401, 403, 422),
}


def _message(item: FeedEvent) -> ServerSentEvent:
    # Same JSON as JSONResponse writes for /v1/events; one line, since
    # json.dumps escapes newlines inside strings.
    body = event_body(item)
    data = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return ServerSentEvent(data=data, id=item.cursor, event=item.event.event_type.value)


async def _follow(
    q: VideoQueries,
    filters: FeedFilter,
    first: Page[FeedEvent],
    signal: FeedSignal,
    shutdown: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """Emit `first`, then every later event, until the client or the server goes away.

    A disconnect cancels this generator at an await or a yield; the `with`
    unregisters its subscription either way. On server shutdown sse-starlette
    sets `shutdown` and this returns by itself, within one idle wait, so the
    response ends properly instead of being cut off.
    """

    def stopping() -> bool:
        return wake.closed or shutdown.is_set()

    with signal.subscribe() as wake:
        page = first
        # `first` was read before the subscription existed, so a notification
        # in between was lost: read again at once instead of sleeping.
        sleep = False
        while not stopping():
            for item in page.items:
                yield _message(item)
            if sleep:
                await wake.wait(IDLE_POLL_SECONDS)
                if stopping():
                    return
            try:
                page = await run_in_threadpool(
                    q.events, after=page.next_cursor, limit=PAGE_SIZE, filters=filters
                )
            except Unavailable as exc:
                # The 200 has gone out, so this cannot become a 503. Keep the
                # stream open (pings go on) and read from the same cursor after
                # an idle wait: nothing is skipped, and no reconnect is needed.
                log.warning("event stream: %s", exc.detail)
                page = Page[FeedEvent](items=[], next_cursor=page.next_cursor)
                sleep = True
                continue
            sleep = len(page.items) < PAGE_SIZE


@router.get(
    "/events/stream",
    response_class=EventSourceResponse,
    responses=_STREAM_DOC,
    summary="The global event log, live (Server-Sent Events), resumable with Last-Event-ID",
)
async def stream_events(
    request: Request,
    _: Reader,
    q: Queries,
    after: Annotated[
        str | None,
        Query(max_length=100, description="an opaque cursor; Last-Event-ID wins over it"),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias=LAST_EVENT_ID, max_length=100, description="the last `id` received"),
    ] = None,
    img_name: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
    source_type: Annotated[SourceType | None, Query()] = None,
    event_type: EventType | None = None,
) -> EventSourceResponse:
    filters = FeedFilter(
        img_name=img_name,
        source_type=source_type,
        event_type=event_type.value if event_type is not None else None,
    )
    from_header = bool(last_event_id)
    cursor = last_event_id if from_header else after
    # The first read happens before the response starts, so that a bad cursor
    # still gets a 422 problem instead of a broken stream.
    try:
        first = await run_in_threadpool(q.events, after=cursor, limit=PAGE_SIZE, filters=filters)
    except ValidationFailed as exc:
        if not from_header:
            raise
        raise ValidationFailed(
            exc.detail, errors=[{"loc": ["header", LAST_EVENT_ID], "msg": exc.detail}]
        ) from exc
    state = request.app.state
    shutdown = anyio.Event()
    return EventSourceResponse(
        _follow(q, filters, first, state.feed_signal, shutdown),
        ping=getattr(state, "feed_ping_seconds", DEFAULT_PING_SECONDS),
        shutdown_event=shutdown,
        # Longer than one idle wait, so that `_follow` notices and ends first.
        shutdown_grace_period=IDLE_POLL_SECONDS + 1.0,
    )
