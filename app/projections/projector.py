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


def append(
    conn: Connection, current: Current, new: list[NewEvent]
) -> tuple[list[RecordedEvent], StatusRow]:
    """Append `new` to the stream of `current.img_name`, at `current`'s version,
    and project it. Returns the recorded events and the new row.

    With a transaction clock (PostgreSQL) a single event and its row go in
    one statement: the row is folded first, from the event as it will be
    recorded, and the statement fills in the one thing only the database
    knows, the event's position (`last_position`). Otherwise the events are
    appended, then their folded row is upserted. Either way the fold is
    `status.apply`. Raises `ConcurrencyConflict` like `store.append`.
    """
    if current.clock is not None and len(new) == 1 and store.can_append_projected(conn):
        pending = store.pending(current.img_name, current.version + 1, new[0], current.clock)
        row = apply(current.row, pending)
        event = store.append_projected(conn, pending, row.as_values())
        row.last_position = event.position
        return [event], row
    recorded = store.append(conn, current.img_name, current.version, new)
    return recorded, project(conn, current.row, recorded)


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
