"""The inline projector: writes the folded row in the append's transaction.

Takes a connection and never commits: a failed projection rolls its
append back with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select

from app.db import dialect
from app.db.tables import image_status, projection_state
from app.events import store
from app.events.types import NewEvent, RecordedEvent
from app.projections import status
from app.projections.status import StatusRow, apply, row_from_values

_ROW_COLUMNS = [image_status.c[name] for name in status.COLUMNS]
_LOAD = dialect.DriverStatement(
    select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name"))
)


@dataclass(frozen=True, slots=True)
class Current:
    """An image's projected row as a command reads it, before it decides."""

    img_name: str
    #: None before the image's first event.
    row: StatusRow | None
    #: The database clock for the whole transaction, where it has one
    #: (`dialect.transaction_clock`): every event appended in this
    #: transaction is recorded at this time. None elsewhere.
    clock: datetime | None

    @property
    def version(self) -> int:
        return self.row.version if self.row is not None else 0


def load(conn: Connection, img_name: str) -> StatusRow | None:
    """The projected row of one image, or None if it has no events."""
    found = _LOAD.run(conn, {"img_name": img_name})
    return row_from_values(found[0]) if found else None


def load_current(conn: Connection, img_name: str) -> Current:
    """`load`, plus the transaction's clock where the database has one (one round trip)."""
    stmt = _load_with_clock(conn.dialect.name)
    if stmt is None:
        return Current(img_name, load(conn, img_name), None)
    ((*values, clock),) = stmt.run(conn, {"img_name": img_name})
    # The outer join leaves every column NULL when the image has no row.
    row = row_from_values(values) if values[0] is not None else None
    return Current(img_name, row, clock)


@functools.lru_cache(maxsize=4)
def _load_with_clock(dialect_name: str) -> dialect.DriverStatement | None:
    """SELECT clock, then the row's columns, outer-joined so that the clock
    comes back for an image without a row too (None where there is no
    transaction clock)."""
    clock = dialect.transaction_clock(dialect_name == "postgresql")
    if clock is None:
        return None
    tx = select(clock.label("clock")).subquery("tx")
    found = tx.outerjoin(image_status, image_status.c.img_name == bindparam("img_name"))
    return dialect.DriverStatement(select(*_ROW_COLUMNS, tx.c.clock).select_from(found))


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
    dialect.upsert(conn, image_status, new.as_values(), key="img_name")
    return new


def ensure_state(conn: Connection) -> None:
    """Record the projection's version if this database has no record yet."""
    conn.execute(
        dialect.insert_ignore(conn, projection_state).values(
            name=status.NAME, version=status.VERSION, state="ok", last_position=0
        )
    )
