"""Leases: who works a task, until when, and how far along.

Operational state, not history: a rebuild never needs it, so it lives in
`video_task_leases`, outside the projection. Functions take a connection
inside the caller's transaction, taken after the image's status row was
locked (the lock order), and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from app.db.backend import Backend
from app.db.tables import leases


@dataclass(frozen=True)
class Lease:
    token: str
    worker_id: str
    expires_at: datetime
    lease_seconds: int


def of(conn: Connection, img_name: str) -> Lease | None:
    found = conn.execute(
        select(
            leases.c.lease_token, leases.c.worker_id, leases.c.expires_at, leases.c.lease_seconds
        ).where(leases.c.img_name == img_name)
    ).first()
    return Lease(*found) if found is not None else None


def grant(backend: Backend, conn: Connection, values: dict[str, Any]) -> None:
    """Record a new lease (replacing whatever an earlier attempt left)."""
    backend.upsert(conn, leases, values, key="img_name")


def extend(
    conn: Connection, img_name: str, expires_at: datetime, now: datetime, progress: float | None
) -> None:
    values: dict[str, Any] = {"expires_at": expires_at, "heartbeat_at": now}
    if progress is not None:
        values["progress"] = progress
    conn.execute(update(leases).where(leases.c.img_name == img_name).values(values))


def drop(conn: Connection, img_name: str) -> None:
    conn.execute(delete(leases).where(leases.c.img_name == img_name))


def expired(conn: Connection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(img_name, token) of leases that ran out by `now`, oldest first."""
    rows = conn.execute(
        select(leases.c.img_name, leases.c.lease_token)
        .where(leases.c.expires_at <= now)
        .order_by(leases.c.expires_at)
        .limit(limit)
    )
    return [(r.img_name, r.lease_token) for r in rows]


def progress(conn: Connection, img_name: str) -> float | None:
    value = conn.execute(select(leases.c.progress).where(leases.c.img_name == img_name)).scalar()
    return float(value) if value is not None else None
