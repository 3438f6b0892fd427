"""The unit of work: one command's transaction, and the events it appended.

A command runs inside one; the store and the projector write through it and
never commit. Once it has committed, the caller hands `appended` to whoever
listens (the worker's wake-up, the feed, metrics): only then are those
events visible to others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection

from app.db.backend import Backend
from app.db.engine import Database
from app.events.types import RecordedEvent


@dataclass
class UnitOfWork:
    conn: Connection
    backend: Backend
    #: What this transaction appended, in order.
    appended: list[RecordedEvent] = field(default_factory=list)


@contextmanager
def unit_of_work(db: Database) -> Iterator[UnitOfWork]:
    """A write transaction: commits when the block ends, rolls back if it raises."""
    with db.write() as conn:
        yield UnitOfWork(conn, db.backend)
