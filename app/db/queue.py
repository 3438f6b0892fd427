"""The work queue: the oldest due pending video, as a claim reads it.

The queue is the status projection itself, read through its
(video_status, not_before, requested_at) index, or, for a claim that names
its generators, the (video_status, generator, not_before, requested_at) one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from app.db.backend import Backend
from app.db.tables import image_status
from app.lifecycle import Status


def lock_oldest_due(
    backend: Backend,
    conn: Connection,
    now: datetime,
    source_types: list[str] | None,
    generators: list[str] | None = None,
) -> str | None:
    """Lock the status row of the oldest due pending video and name it, or None.

    Rows other claimers hold are skipped (`Backend.claim_due`). This row lock
    is the first lock of a claim's transaction, as in every command. With
    `generators`, only their videos are looked at.
    """
    c = image_status.c
    query = (
        select(c.img_name, c.not_before, c.requested_at)
        .where(c.video_status == Status.PENDING.value)
        .where(c.not_before <= now)
        .order_by(c.not_before, c.requested_at)
        .limit(1)
    )
    if source_types:
        query = query.where(backend.in_list(c.source_type, source_types))
    claim = (
        backend.claim_due_among(query, c.generator, generators)
        if generators
        else backend.claim_due(query)
    )
    found: str | None = conn.execute(claim).scalar()
    return found
