"""The inline projector: writes the folded row in the append's transaction.

Takes a connection and never commits: a failed projection rolls its
append back with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, literal_column, select, true

from app.db.backend import Backend, backend_of
from app.db.statement import Statement
from app.db.tables import image_status, projection_state
from app.db.unit_of_work import UnitOfWork
from app.events import store
from app.events.types import NewEvent, RecordedEvent
from app.projections import status
from app.projections.status import StatusRow, apply, row_from_values

_ROW_COLUMNS = [image_status.c[name] for name in status.COLUMNS]
_LOAD = Statement(select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name")))


@dataclass(frozen=True, slots=True)
class Current:
    """An image's projected row as a command reads it, before it decides."""

    img_name: str
    #: None before the image's first event.
    row: StatusRow | None
    #: The database clock read once the row was locked, where the database
    #: can fuse an append with its projection (`Backend.locked_clock`):
    #: the event this command appends is recorded at this time. None elsewhere.
    clock: datetime | None

    @property
    def version(self) -> int:
        return self.row.version if self.row is not None else 0


def load(conn: Connection, img_name: str) -> StatusRow | None:
    """The projected row of one image, or None if it has no events."""
    found = _LOAD.run(conn, {"img_name": img_name})
    return row_from_values(found[0]) if found else None


def load_current(conn: Connection, img_name: str) -> Current:
    """Lock the image's status row until commit and read it (one round trip).

    This is the lock order (README, "Design notes"): every command that
    writes anything about an image calls this first, before it touches the
    log, the idempotency keys or the leases. Commands on one image then
    queue on this row lock instead of meeting in two orders (a row lock and
    the log's UNIQUE(img_name, version) entry), which deadlocked. An image
    without a row has nothing to lock: two first writers meet at the log's
    unique index, and the loser gets `ConcurrencyConflict`.

    On SQLite the write transaction (BEGIN IMMEDIATE) already excludes
    every other writer, and FOR UPDATE compiles to nothing.
    """
    stmt = _lock_with_clock(backend_of(conn))
    if stmt is None:
        found = _LOCK.run(conn, {"img_name": img_name})
        return Current(img_name, row_from_values(found[0]) if found else None, None)
    ((*values, clock),) = stmt.run(conn, {"img_name": img_name})
    # The outer join leaves every column NULL when the image has no row.
    row = row_from_values(values) if values[0] is not None else None
    return Current(img_name, row, clock)


_LOCK = Statement(
    select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name")).with_for_update()
)


@functools.lru_cache(maxsize=4)
def _lock_with_clock(backend: Backend) -> Statement | None:
    """The locked row, outer-joined so that a clock comes back for an image
    without a row too (None where there is no such clock).

    The clock is read after the lock was granted (the outer SELECT's
    target list is computed from the joined row), so an event appended by a
    command that queued behind another on this row is recorded after it:
    `recorded_at` follows the stream's versions.
    """
    clock = backend.locked_clock()
    if clock is None:
        return None
    locked = select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name"))
    locked_row = locked.with_for_update().lateral("locked")
    one = select(literal_column("1").label("one")).subquery("tx")
    found = one.outerjoin(locked_row, true())
    return Statement(select(*locked_row.c, clock.label("clock")).select_from(found))


def append(uow: UnitOfWork, current: Current, new: NewEvent) -> StatusRow:
    """Append `new` to the stream of `current.img_name`, at `current`'s version,
    and project it; the recorded event joins `uow.appended`. Returns the new row.

    Where the backend fuses an insert with an upsert (and `current` has the
    clock the event will be recorded at), the event and its row go in one
    statement: the row is folded first, from the event as it will be
    recorded, and the statement fills in the one thing only the database
    knows, the event's position (`last_position`). Otherwise the event is
    appended, then its folded row upserted. Either way the fold is
    `status.apply`. Raises `ConcurrencyConflict` like `store.append`.
    """
    fused = _append_projected_statement(uow.backend)
    if current.clock is not None and fused is not None:
        pending = store.pending(current.img_name, current.version + 1, new, current.clock)
        row = apply(current.row, pending)
        event = _append_projected(uow, fused, pending, row)
        row.last_position = event.position
    else:
        (event,) = store.append(uow.conn, current.img_name, current.version, [new])
        row = project(uow.conn, current.row, [event])
    uow.appended.append(event)
    return row


#: How the fused statement names the status row's parameters, apart from the event's.
_ROW_PREFIX = "row_"


def _append_projected(
    uow: UnitOfWork, fused: Statement, event: RecordedEvent, row: StatusRow
) -> RecordedEvent:
    """Append `event` (made by `store.pending`) and upsert its folded `row`, in
    one statement. The row's `last_position` is stored as the position the
    database gives the event."""
    params = store.event_values(event.img_name, event.version, event)
    params["recorded_at"] = event.recorded_at
    for name, value in row.as_values().items():
        params[_ROW_PREFIX + name] = value
    with store.conflict_on_version(uow.backend, event.img_name, event.version - 1):
        ((position, recorded_at, tx_id),) = fused.run(uow.conn, params)
    return store.recorded(event.img_name, event.version, event, position, recorded_at, tx_id)


@functools.lru_cache(maxsize=4)
def _append_projected_statement(backend: Backend) -> Statement | None:
    """The event's INSERT and the status upsert as one statement (None where
    the backend cannot fuse them), built once per backend."""
    return backend.fuse_insert_and_upsert(
        store.append_insert(backend, clock_bound=True),
        image_status,
        [c.name for c in image_status.columns if not c.primary_key],
        "img_name",
        {"last_position": "position"},
        prefix=_ROW_PREFIX,
    )


def project(conn: Connection, row: StatusRow | None, recorded: list[RecordedEvent]) -> StatusRow:
    """Fold `recorded` onto `row` (the image's current row) and upsert the result."""
    new = row
    for ev in recorded:
        new = apply(new, ev)
    assert new is not None, "project() needs at least one event"
    backend_of(conn).upsert(conn, image_status, new.as_values(), key="img_name")
    return new


def ensure_state(conn: Connection) -> None:
    """Record the projection's version if this database has no record yet."""
    conn.execute(
        backend_of(conn)
        .insert_ignore(projection_state)
        .values(name=status.NAME, version=status.VERSION, state="ok", last_position=0)
    )
