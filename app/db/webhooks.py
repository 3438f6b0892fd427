"""Webhook endpoints and their deliveries: the rows, and the queue of what is due.

A delivery is due when it is pending, its time has come, no dispatcher holds
its lease, and it is the oldest pending delivery of its image for its
endpoint: an image's events go out in version order, and different images
do not wait for each other.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from app.db.backend import Backend, backend_of
from app.db.statement import Statement
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


def note_delivered(
    conn: Connection, endpoint_ids: Collection[str], now: datetime, every: timedelta
) -> None:
    """Mark a success on the endpoints: no longer failing, delivered at `now`.
    Skips (no row lock) an endpoint where that was noted less than `every` ago."""
    if not endpoint_ids:
        return
    e = endpoints.c
    stale = or_(
        e.failing_since.is_not(None),
        e.last_delivered_at.is_(None),
        e.last_delivered_at < now - every,
    )
    conn.execute(
        update(endpoints)
        .where(backend_of(conn).in_list(e.id, list(endpoint_ids)), stale)
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
    """Insert `rows`; one already there (the same endpoint and message) is kept as it is.

    With RETURNING, SQLAlchemy sends the rows as multi-row VALUES, a few
    statements for a page; an ON CONFLICT insert without it goes row by row
    (a round trip each)."""
    if rows:
        conn.execute(backend.insert_ignore(deliveries).returning(deliveries.c.id), rows)


def enabled_endpoints(conn: Connection) -> list[tuple[str, str | None]]:
    """Each enabled endpoint's id and log cursor."""
    e = endpoints.c
    rows = conn.execute(select(e.id, e.feed_cursor).where(e.state == ENABLED))
    return [(endpoint_id, cursor) for endpoint_id, cursor in rows]


def _due_statement() -> Statement:
    e = endpoints.c
    d = deliveries.c
    now = bindparam("now", type_=d.next_attempt_at.type)
    # Every value a parameter, the constants too (see `Statement`).
    return Statement(
        select(d.id)
        .where(
            d.status == bindparam("pending"),
            d.next_attempt_at <= now,
            or_(d.lease_until.is_(None), d.lease_until < now),
            d.endpoint_id.not_in(select(e.id).where(e.state != bindparam("enabled"))),
        )
        .order_by(d.next_attempt_at, d.id)
        .limit(bindparam("limit"))
    )


#: Built once: building it cost a claim more than running it.
_DUE = _due_statement()


def due(conn: Connection, now: datetime, limit: int) -> list[int]:
    """Up to `limit` due deliveries of enabled endpoints, oldest first.

    One waiting behind an earlier delivery of its image has no
    `next_attempt_at`, so this walks the partial due index in order and
    stops at `limit`. The endpoints left out are named by `NOT IN` (a
    filter, not an index condition): an `endpoint_id = ANY(enabled)` was planned, on a young table
    without statistics, as a scan of all the endpoint's pending deliveries
    and a sort of them, on every claim."""
    params = {"now": now, "limit": limit, "pending": PENDING, "enabled": ENABLED}
    return [row[0] for row in _DUE.run(conn, params)]


def newest_of_images(
    conn: Connection, endpoint_id: str, names: Collection[str]
) -> dict[str, tuple[str, bool]]:
    """Of each image in `names` that has one, the endpoint's newest delivery:
    its message and whether it is pending."""
    if not names:
        return {}
    d = deliveries.c
    newest = (
        select(func.max(d.id).label("id"))
        .where(d.endpoint_id == endpoint_id, backend_of(conn).in_list(d.img_name, list(names)))
        .group_by(d.img_name)
        .subquery("newest")
    )
    rows = conn.execute(
        select(d.img_name, d.message_id, d.status).join(newest, newest.c.id == d.id)
    )
    return {name: (message, status == PENDING) for name, message, status in rows}


def release_after(
    conn: Connection, backend: Backend, finished: Collection[tuple[str, str]], now: datetime
) -> None:
    """Make due the deliveries waiting behind these (endpoint, message) ones,
    which are no longer pending."""
    if not finished:
        return
    d = deliveries.c
    rows = [
        {"endpoint_id": ep, "after_message_id": message, "next_attempt_at": now}
        for ep, message in sorted(set(finished))
    ]
    waiting = and_(d.status == PENDING, d.next_attempt_at.is_(None))
    backend.update_rows(conn, deliveries, ["endpoint_id", "after_message_id"], rows, where=waiting)


def stranded(conn: Connection) -> list[int]:
    """Deliveries still waiting behind one that is no longer pending. A
    delivery made while the one before it finished in another transaction
    was not there to be released; this finds it.

    The join names only (endpoint, message), so that its one index is the
    unique one, with or without statistics."""
    d = deliveries.c
    before = deliveries.alias("before")
    found = conn.execute(
        select(d.id)
        .select_from(
            deliveries.outerjoin(
                before,
                and_(
                    before.c.endpoint_id == d.endpoint_id,
                    before.c.message_id == d.after_message_id,
                ),
            )
        )
        .where(
            d.status == PENDING,
            d.next_attempt_at.is_(None),
            or_(before.c.id.is_(None), before.c.status != PENDING),
        )
    )
    return [row[0] for row in found]


def release(conn: Connection, ids: list[int], now: datetime) -> None:
    """Make these waiting deliveries due now."""
    d = deliveries.c
    conn.execute(
        update(deliveries)
        .where(
            backend_of(conn).in_list(d.id, ids), d.status == PENDING, d.next_attempt_at.is_(None)
        )
        .values(next_attempt_at=now)
    )


class Leased(NamedTuple):
    """What `lease` returns of a delivery: what sending it takes."""

    id: int
    endpoint_id: str
    message_id: str
    body: str
    attempts: int
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None


@functools.lru_cache(maxsize=4)
def _lease_statement(backend: Backend) -> Statement:
    """`lease`'s statement, built once per backend: building it (and running
    it through SQLAlchemy's result machinery) cost more than the round trip."""
    d = deliveries.c
    now = bindparam("now", type_=d.lease_until.type)
    free = select(d.id).where(
        backend.in_bound(d.id, "ids"),
        d.status == bindparam("pending"),
        or_(d.lease_until.is_(None), d.lease_until < now),
    )
    e = endpoints.c

    def of_endpoint(col: Any) -> Any:
        # A scalar subquery: SQLite's RETURNING cannot name an UPDATE … FROM table.
        return select(col).where(e.id == d.endpoint_id).scalar_subquery().label(col.name)

    return Statement(
        update(deliveries)
        .where(d.id.in_(backend.claim_due(free).scalar_subquery()))
        .values(
            lease_token=bindparam("token", type_=d.lease_token.type),
            lease_until=bindparam("lease_until", type_=d.lease_until.type),
        )
        .returning(
            d.id,
            d.endpoint_id,
            d.message_id,
            d.body,
            d.attempts,
            of_endpoint(e.url),
            of_endpoint(e.secret),
            of_endpoint(e.previous_secret),
            of_endpoint(e.previous_secret_until),
        )
    )


def lease(
    conn: Connection,
    backend: Backend,
    ids: list[int],
    now: datetime,
    token: str,
    lease_until: datetime,
) -> list[Leased]:
    """Lease those of `ids` that are still pending and free to `token`
    (skipping rows another dispatcher holds), in one statement; returns them,
    by id, with their endpoint's url and secrets."""
    params = {
        "ids": list(ids),
        "now": now,
        "token": token,
        "lease_until": lease_until,
        "pending": PENDING,
    }
    leased = [Leased(*row) for row in _lease_statement(backend).run(conn, params)]
    return sorted(leased, key=lambda row: row.id)


def record(conn: Connection, delivery_id: int, token: str, values: Mapping[str, Any]) -> bool:
    """Write an attempt's outcome, if the lease is still `token`'s."""
    d = deliveries.c
    done = conn.execute(
        update(deliveries)
        .where(and_(d.id == delivery_id, d.lease_token == token, d.status == PENDING))
        .values(**values, lease_token=None, lease_until=None)
    )
    return done.rowcount > 0


def record_successes(
    conn: Connection, backend: Backend, rows: list[dict[str, Any]], delivered_at: datetime
) -> set[tuple[str, str]]:
    """Mark deliveries succeeded, each only if its lease is still the
    `lease_token` given with it, in one statement. Returns those it marked,
    as (endpoint, message)."""
    if not rows:
        return set()
    d = deliveries.c
    done = [
        {
            "id": r["id"],
            "lease_token": r["token"],
            "attempts": r["attempts"],
            "last_status_code": r["last_status_code"],
            "last_latency_ms": r["last_latency_ms"],
            "last_response": r["last_response"],
        }
        for r in rows
    ]
    same = {
        "status": SUCCEEDED,
        "last_error": None,
        "delivered_at": delivered_at,
        "next_attempt_at": None,
        "lease_until": None,  # the token stays, matched on: a replay clears it
    }
    updated = backend.update_rows(
        conn,
        deliveries,
        ["id", "lease_token"],
        done,
        same=same,
        where=d.status == PENDING,
        returning=[d.endpoint_id, d.message_id],
    )
    return {(row.endpoint_id, row.message_id) for row in updated}


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
    """Make the deliveries `where` selects pending again, attempts reset: due
    now, or, behind a pending delivery of its image (replayed too, say),
    waiting for it."""
    d = deliveries.c
    ids = [row[0] for row in conn.execute(select(d.id).where(where))]
    if not ids:
        return 0
    chosen = backend_of(conn).in_list(d.id, ids)
    values = {
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_token": None,
        "lease_until": None,
        "delivered_at": None,
    }
    conn.execute(update(deliveries).where(chosen).values(**values))
    before = deliveries.alias("before")
    waits = (
        select(before.c.id)
        .where(
            before.c.endpoint_id == d.endpoint_id,
            before.c.message_id == d.after_message_id,
            before.c.status == PENDING,
        )
        .exists()
    )
    conn.execute(update(deliveries).where(chosen, waits).values(next_attempt_at=None))
    return len(ids)


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
