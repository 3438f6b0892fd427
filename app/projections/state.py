"""What each projection's table was built with, against what the code expects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from app.db.tables import image_status, projection_state
from app.projections import status

#: Projections this code maintains: name -> (expected version, live table).
EXPECTED = {status.NAME: status.VERSION}


@dataclass(frozen=True)
class ProjectionInfo:
    name: str
    version: int
    expected_version: int
    state: str
    rows: int
    last_position: int
    built_at: datetime | None


def describe(conn: Connection) -> list[ProjectionInfo]:
    """Each projection's stored and expected version, state, rows, last position."""
    stored = {r.name: r for r in conn.execute(select(projection_state))}
    rows, last = conn.execute(
        select(func.count(), func.coalesce(func.max(image_status.c.last_position), 0))
    ).one()
    out = []
    for name, expected in EXPECTED.items():
        rec = stored.get(name)
        version = rec.version if rec is not None else 0
        state = rec.state if rec is not None else "stale"
        if state != "rebuilding" and version != expected:
            state = "stale"
        out.append(
            ProjectionInfo(
                name=name,
                version=version,
                expected_version=expected,
                state=state,
                rows=int(rows),
                last_position=int(last),
                built_at=rec.built_at if rec is not None else None,
            )
        )
    return out
