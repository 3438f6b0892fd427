"""Webhook endpoints and their deliveries: the rows, and the queue of what is due.

A delivery is due when it is pending, its time has come, no dispatcher holds
its lease, and it is the oldest pending delivery of its image for its
endpoint: an image's events go out in version order, and different images
do not wait for each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    String,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from app.db.backend import Backend
from app.db.tables import image_status
from app.db.tables import webhook_deliveries as deliveries
from app.db.tables import webhook_endpoints as endpoints

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
ENABLED, DISABLED = "enabled", "disabled"


# --- endpoints ------------------------------------------------------------------------


def add_endpoint(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(endpoints).values(**values))


def endpoint(conn: Connection, endpoint_id: str, *, lock: bool = False) -> Row[Any] | None:
    query = select(endpoints).where(endpoints.c.id == endpoint_id)
    if lock:
        query = query.with_for_update()
    return conn.execute(query).first()


def list_endpoints(conn: Connection, after: str | None, limit: int) -> Sequence[Row[Any]]:
    query = select(endpoints).order_by(endpoints.c.id).limit(limit)
    if after is not None:
        query = query.where(endpoints.c.id > after)
    return conn.execute(query).all()


def change_endpoint(conn: Connection, endpoint_id: str, values: Mapping[str, Any]) -> None:
    conn.execute(update(endpoints).where(endpoints.c.id == endpoint_id).values(**values))


def note_delivered(conn: Connection, endpoint_id: str, now: datetime, every: timedelta) -> None:
    """Mark a success on the endpoint: no longer failing, delivered at `now`.
    A no-op (no row lock) when that was noted less than `every` ago."""
    e = endpoints.c
    stale = or_(
        e.failing_since.is_not(None),
        e.last_delivered_at.is_(None),
        e.last_delivered_at < now - every,
    )
    conn.execute(
        update(endpoints)
        .where(e.id == endpoint_id, stale)
        .values(last_delivered_at=now, failing_since=None)
    )


def remove_endpoint(conn: Connection, endpoint_id: str) -> bool:
    conn.execute(delete(deliveries).where(deliveries.c.endpoint_id == endpoint_id))
    return conn.execute(delete(endpoints).where(endpoints.c.id == endpoint_id)).rowcount > 0


def endpoints_to_follow(conn: Connection, backend: Backend) -> Sequence[Row[Any]]:
    """The enabled endpoints, locked; one another dispatcher holds is skipped."""
    query = select(endpoints).where(endpoints.c.state == ENABLED).order_by(endpoints.c.id)
    return conn.execute(backend.claim_due(query)).all()


# --- deliveries -----------------------------------------------------------------------


def add_deliveries(conn: Connection, backend: Backend, rows: list[dict[str, Any]]) -> None:
    """Insert `rows`; one already there (the same endpoint and message) is kept as it is."""
    if rows:
        conn.execute(backend.insert_ignore(deliveries), rows)


def enabled_endpoints(conn: Connection) -> list[tuple[str, str | None]]:
    """Each enabled endpoint's id and log cursor."""
    e = endpoints.c
    rows = conn.execute(select(e.id, e.feed_cursor).where(e.state == ENABLED))
    return [(endpoint_id, cursor) for endpoint_id, cursor in rows]


def due(conn: Connection, now: datetime, limit: int) -> list[int]:
    """Up to `limit` due deliveries, oldest first: of each image, per enabled
    endpoint, only its oldest pending delivery (one pass, a window over what
    is pending). A correlated "no earlier one pending" test instead was
    planned, on a young table without statistics, as a rescan per row."""
    d = deliveries.c
    rank = (
        func.row_number()
        .over(
            partition_by=(d.endpoint_id, func.coalesce(d.img_name, func.cast(d.id, String))),
            order_by=d.id,
        )
        .label("rank")
    )
    enabled = select(endpoints.c.id).where(endpoints.c.state == ENABLED)
    pending = (
        select(d.id, d.next_attempt_at, d.lease_until, rank)
        .where(d.status == PENDING, d.endpoint_id.in_(enabled))
        .subquery("pending")
    )
    p = pending.c
    return [
        row[0]
        for row in conn.execute(
            select(p.id)
            .where(
                p.rank == 1,
                p.next_attempt_at <= now,
                or_(p.lease_until.is_(None), p.lease_until < now),
            )
            .order_by(p.next_attempt_at, p.id)
            .limit(limit)
        )
    ]


def lease(
    conn: Connection,
    backend: Backend,
    ids: list[int],
    now: datetime,
    token: str,
    lease_until: datetime,
) -> Sequence[Row[Any]]:
    """Lease those of `ids` that are still pending and free to `token`
    (skipping rows another dispatcher holds); returns them with their
    endpoint's url and secrets."""
    d = deliveries.c
    query = select(d.id).where(
        d.id.in_(ids),
        d.status == PENDING,
        or_(d.lease_until.is_(None), d.lease_until < now),
    )
    leased = [r[0] for r in conn.execute(backend.claim_due(query))]
    if not leased:
        return []
    conn.execute(
        update(deliveries)
        .where(d.id.in_(leased))
        .values(lease_token=token, lease_until=lease_until)
    )
    e = endpoints.c
    return conn.execute(
        select(deliveries, e.url, e.secret, e.previous_secret, e.previous_secret_until)
        .join(endpoints, e.id == d.endpoint_id)
        .where(d.id.in_(leased))
        .order_by(d.id)
    ).all()


def record(conn: Connection, delivery_id: int, token: str, values: Mapping[str, Any]) -> bool:
    """Write an attempt's outcome, if the lease is still `token`'s."""
    d = deliveries.c
    done = conn.execute(
        update(deliveries)
        .where(and_(d.id == delivery_id, d.lease_token == token, d.status == PENDING))
        .values(**values, lease_token=None, lease_until=None)
    )
    return done.rowcount > 0


def record_successes(conn: Connection, backend: Backend, rows: list[dict[str, Any]]) -> set[str]:
    """Mark deliveries succeeded, each only if its lease is still the
    `lease_token` given with it, in one statement. Returns their endpoints."""
    if not rows:
        return set()
    d = deliveries.c
    done = [
        {
            "id": r["id"],
            "lease_token": r["token"],
            "status": SUCCEEDED,
            "attempts": r["attempts"],
            "last_status_code": r["last_status_code"],
            "last_error": None,
            "last_latency_ms": r["last_latency_ms"],
            "last_response": r["last_response"],
            "delivered_at": r["delivered_at"],
            "next_attempt_at": None,
            "lease_until": None,  # the token stays, matched on: a replay clears it
        }
        for r in rows
    ]
    backend.update_rows(conn, deliveries, ["id", "lease_token"], done, where=d.status == PENDING)
    ids = [r["id"] for r in rows]
    found = conn.execute(select(d.endpoint_id).where(d.id.in_(ids)).distinct())
    return {row[0] for row in found}


def delivery(conn: Connection, delivery_id: int) -> Row[Any] | None:
    return conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()


def list_deliveries(
    conn: Connection, endpoint_id: str, status: str | None, after: int | None, limit: int
) -> Sequence[Row[Any]]:
    """An endpoint's deliveries, newest first."""
    d = deliveries.c
    query = select(deliveries).where(d.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(d.status == status)
    if after is not None:
        query = query.where(d.id < after)
    return conn.execute(query.order_by(d.id.desc()).limit(limit)).all()


def replay(conn: Connection, where: Any, now: datetime) -> int:
    """Make the deliveries `where` selects pending again, due now, attempts reset."""
    values = {
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_token": None,
        "lease_until": None,
        "delivered_at": None,
    }
    return int(conn.execute(update(deliveries).where(where).values(**values)).rowcount)


def pending_counts(conn: Connection) -> list[tuple[str, int, datetime]]:
    """Per endpoint: pending deliveries and the oldest one's creation time."""
    d = deliveries.c
    rows = conn.execute(
        select(d.endpoint_id, func.count(), func.min(d.created_at))
        .where(d.status == PENDING)
        .group_by(d.endpoint_id)
    )
    return [(ep, int(n), oldest) for ep, n, oldest in rows]


def source_types_of(conn: Connection, names: list[str]) -> dict[str, str | None]:
    """Each image's source type (as the feed's `source_type` filter reads it)."""
    if not names:
        return {}
    c = image_status.c
    rows = conn.execute(select(c.img_name, c.source_type).where(c.img_name.in_(names)))
    return {name: source for name, source in rows}
