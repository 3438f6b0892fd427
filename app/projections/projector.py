"""The inline projector: writes the folded row in the append's transaction.

Takes a connection and never commits: a failed projection rolls its
append back with it.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from app.db import dialect
from app.db.tables import image_status, projection_state
from app.events.types import RecordedEvent
from app.projections import status
from app.projections.status import StatusRow, apply, row_from_values

_ROW_COLUMNS = [image_status.c[name] for name in status.COLUMNS]
_LOAD = dialect.DriverStatement(
    select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name"))
)


def load(conn: Connection, img_name: str) -> StatusRow | None:
    """The projected row of one image, or None if it has no events."""
    found = _LOAD.run(conn, {"img_name": img_name})
    return row_from_values(found[0]) if found else None


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
