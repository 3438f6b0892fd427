"""The event store: append with optimistic concurrency, read a stream, read all.

Functions take a connection inside the caller's transaction and never
commit. Driver exceptions stay here: a lost race on UNIQUE(img_name,
version) leaves as `ConcurrencyConflict`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    Select,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from app.db.backend import Backend, backend_of
from app.db.statement import Statement
from app.db.tables import events, image_status
from app.errors import ConcurrencyConflict
from app.events.types import NewEvent, RecordedEvent
from app.events.upcasters import upcast
from app.lifecycle import EventType, Status

#: The log columns a `RecordedEvent` is read from, in its fields' order.
EVENT_COLUMNS = tuple(events.c[f.name] for f in fields(RecordedEvent))


def append(
    conn: Connection, img_name: str, expected_version: int, new: Sequence[NewEvent]
) -> list[RecordedEvent]:
    """Append `new` to the stream of `img_name`, which must be at `expected_version`.

    Versions follow on without gaps. Returns the recorded events, with their
    positions and database timestamps. Raises `ConcurrencyConflict` when
    another writer got there first; the caller's transaction is then unusable
    and must be rolled back.
    """
    appended: list[RecordedEvent] = []
    backend = backend_of(conn)
    stmt = _append_statement(backend)
    for offset, ev in enumerate(new, start=1):
        version = expected_version + offset
        with conflict_on_version(backend, img_name, expected_version):
            ((position, recorded_at, tx_id),) = stmt.run(conn, event_values(img_name, version, ev))
        appended.append(recorded(img_name, version, ev, position, recorded_at, tx_id))
    return appended


def pending(img_name: str, version: int, ev: NewEvent, recorded_at: datetime) -> RecordedEvent:
    """`ev` as it will be recorded at `version` by a transaction whose database
    clock read `recorded_at` with its locked row (see `Backend.locked_clock`).

    Its position (0 here) and tx_id (None) are known only once it is
    appended (see `app.projections.projector.append`).
    """
    return recorded(img_name, version, ev, 0, recorded_at, None)


@contextmanager
def conflict_on_version(backend: Backend, img_name: str, expected_version: int) -> Iterator[None]:
    """Turn a lost race on UNIQUE(img_name, version) into `ConcurrencyConflict`."""
    try:
        yield
    except IntegrityError as exc:
        if backend.violated_constraint(exc) not in (None, _STREAM_VERSION_UNIQUE):
            raise
        raise ConcurrencyConflict(
            f"stream {img_name!r} moved past version {expected_version}",
            img_name=img_name,
        ) from exc


#: What the database gives an appended event; an append binds every other column.
ADDED_BY_DATABASE = ("position", "recorded_at", "tx_id")
#: The log columns an append writes from the event itself.
APPENDED_COLUMNS = [c.name for c in events.columns if c.name not in ADDED_BY_DATABASE]
#: The fields a `RecordedEvent` carries over from the event it was made from.
_CARRIED = [
    f.name
    for f in fields(RecordedEvent)
    if f.name not in ("img_name", "version", *ADDED_BY_DATABASE)
]
_ENUMS = frozenset({"event_type", "from_status", "to_status"})


def event_values(img_name: str, version: int, ev: NewEvent | RecordedEvent) -> dict[str, Any]:
    """The log row's values that an append binds (the database adds the rest)."""
    values: dict[str, Any] = {"img_name": img_name, "version": version}
    for name in _CARRIED:
        value = getattr(ev, name)
        values[name] = value.value if name in _ENUMS else value
    return values


def recorded(
    img_name: str,
    version: int,
    ev: NewEvent | RecordedEvent,
    position: int,
    recorded_at: datetime,
    tx_id: int | None,
) -> RecordedEvent:
    """`ev` as the log holds it at `version`, with what the database gave it."""
    return RecordedEvent(
        position=position,
        img_name=img_name,
        version=version,
        recorded_at=recorded_at,
        tx_id=tx_id,
        **{name: getattr(ev, name) for name in _CARRIED},
    )


@functools.lru_cache(maxsize=4)
def _append_statement(backend: Backend) -> Statement:
    """The INSERT … RETURNING of one event, built once per backend (building
    it per append costs more than the round trip)."""
    return Statement(append_insert(backend), prepare=True)


def append_insert(backend: Backend, *, clock_bound: bool = False) -> Insert:
    """The INSERT … RETURNING of one event; `clock_bound`: its `recorded_at`
    is a parameter (a database clock the caller read), else the database's
    clock at the insert."""
    values: dict[str, Any] = {name: bindparam(name) for name in APPENDED_COLUMNS}
    values["recorded_at"] = (
        bindparam("recorded_at", type_=events.c.recorded_at.type)
        if clock_bound
        else backend.clock()
    )
    tx_id = backend.transaction_id()
    if tx_id is not None:
        values["tx_id"] = tx_id
    return (
        insert(events)
        .values(values)
        .returning(events.c.position, events.c.recorded_at, events.c.tx_id)
    )


#: The name of UNIQUE(img_name, version): the optimistic-concurrency guard.
_STREAM_VERSION_UNIQUE = next(
    str(c.name)
    for c in events.constraints
    if isinstance(c, UniqueConstraint) and set(c.columns.keys()) == {"img_name", "version"}
)


def to_event(row: Any) -> RecordedEvent:
    """A log row as a `RecordedEvent`, its payload upcast to today's schema."""
    event_type = EventType(row.event_type)
    return RecordedEvent(
        position=row.position,
        event_id=row.event_id,
        img_name=row.img_name,
        version=row.version,
        event_type=event_type,
        schema_version=row.schema_version,
        from_status=Status(row.from_status),
        to_status=Status(row.to_status),
        data=upcast(event_type, row.schema_version, row.data),
        actor=row.actor,
        reason=row.reason,
        correlation_id=row.correlation_id,
        idempotency_key=row.idempotency_key,
        recorded_at=row.recorded_at,
        tx_id=row.tx_id,
    )


def read_stream(
    conn: Connection,
    img_name: str,
    *,
    after_version: int = 0,
    limit: int | None = None,
    until_version: int | None = None,
    until_time: datetime | None = None,
) -> list[RecordedEvent]:
    """Events of one image in version order, optionally bounded by version or time."""
    query = select(*EVENT_COLUMNS).where(events.c.img_name == img_name)
    if after_version:
        query = query.where(events.c.version > after_version)
    if until_version is not None:
        query = query.where(events.c.version <= until_version)
    if until_time is not None:
        query = query.where(events.c.recorded_at <= until_time)
    query = query.order_by(events.c.version)
    if limit is not None:
        query = query.limit(limit)
    return [to_event(r) for r in conn.execute(query)]


@dataclass(frozen=True)
class FeedFilter:
    img_name: str | None = None
    source_type: str | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class FeedPage:
    events: list[RecordedEvent]
    #: Where to continue from; the given cursor again when nothing was read.
    cursor: str | None


def read_all(
    conn: Connection, *, after: str | None, limit: int, filters: FeedFilter | None = None
) -> FeedPage:
    """The global log in feed order, after the opaque cursor `after`.

    Never skips an event that commits late (see `Backend.feed_visible`).
    Raises ValueError for a cursor this database did not make.
    """
    backend = backend_of(conn)
    query = _filtered(select(*EVENT_COLUMNS).where(backend.feed_visible(events, after)), filters)
    query = query.order_by(*backend.feed_order(events)).limit(limit)
    got = [to_event(r) for r in conn.execute(query)]
    cursor = cursor_of(conn, got[-1]) if got else after
    return FeedPage(events=got, cursor=cursor)


def read_tail(conn: Connection, *, limit: int, filters: FeedFilter | None = None) -> FeedPage:
    """The last `limit` visible events of the global log, in feed order.

    Its cursor is the last one's, so a reader continues from there (with the
    same filters) and misses nothing: anything not yet visible sorts after it.
    """
    backend = backend_of(conn)
    query = _filtered(select(*EVENT_COLUMNS).where(backend.feed_visible(events, None)), filters)
    newest_first = [column.desc() for column in backend.feed_order(events)]
    got = [to_event(r) for r in conn.execute(query.order_by(*newest_first).limit(limit))]
    got.reverse()
    return FeedPage(events=got, cursor=cursor_of(conn, got[-1]) if got else None)


def _filtered(query: Select[Any], filters: FeedFilter | None) -> Select[Any]:
    f = filters or FeedFilter()
    if f.img_name is not None:
        query = query.where(events.c.img_name == f.img_name)
    if f.event_type is not None:
        query = query.where(events.c.event_type == f.event_type)
    if f.source_type is not None:
        query = query.join(
            image_status,
            and_(
                image_status.c.img_name == events.c.img_name,
                image_status.c.source_type == f.source_type,
            ),
        )
    return query


def count_after(conn: Connection, after: str | None) -> int:
    """How many visible events follow cursor `after` now."""
    query = (
        select(func.count()).select_from(events).where(backend_of(conn).feed_visible(events, after))
    )
    return int(conn.execute(query).scalar_one())


def cursor_of(conn: Connection, event: RecordedEvent) -> str:
    """The feed cursor just past `event`, on `conn`'s database."""
    return backend_of(conn).make_cursor(event.tx_id, event.position)


def iter_all(conn: Connection, batch: int = 5000) -> Iterable[RecordedEvent]:
    """Every visible event in feed order, read in batches."""
    after: str | None = None
    while True:
        page = read_all(conn, after=after, limit=batch)
        yield from page.events
        if len(page.events) < batch:
            return
        after = page.cursor
