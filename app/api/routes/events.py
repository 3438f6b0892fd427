"""/v1/events: the global feed, and /v1/stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from app.api.deps import Queries, Reader
from app.api.errors import responses
from app.api.schemas import EventPage, SourceType, Stats
from app.api.views import event_body
from app.errors import ValidationFailed
from app.events.store import FeedFilter
from app.lifecycle import EventType
from app.service import utcnow

router = APIRouter(prefix="/v1", tags=["events"])


@router.get(
    "/events",
    response_model=EventPage,
    responses=responses(401, 403, 422),
    summary="The global event log, in an order that never skips a late commit",
)
def list_events(
    _: Reader,
    q: Queries,
    after: Annotated[str | None, Query(max_length=100, description="an opaque cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    img_name: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
    source_type: Annotated[SourceType | None, Query()] = None,
    event_type: EventType | None = None,
    tail: Annotated[
        bool,
        Query(
            description="the last `limit` events (still oldest first) instead of those "
            "after `after`; its next_cursor continues from now"
        ),
    ] = False,
) -> Response:
    if tail and after is not None:
        msg = "give either 'after' or 'tail', not both"
        raise ValidationFailed(msg, errors=[{"loc": ["query", "tail"], "msg": msg}])
    page = q.events(
        after=after,
        limit=limit,
        filters=FeedFilter(
            img_name=img_name,
            source_type=source_type,
            event_type=event_type.value if event_type is not None else None,
        ),
        tail=tail,
    )
    items = [event_body(item) for item in page.items]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


@router.get(
    "/stats",
    response_model=Stats,
    responses=responses(401, 403),
    summary="Counts by status and source type, queue depth, oldest pending age",
)
def stats(_: Reader, q: Queries) -> Response:
    return JSONResponse(q.stats(utcnow()))
