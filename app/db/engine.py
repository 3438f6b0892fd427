"""Engines and transaction scopes, built only by a composition root.

A `Database` holds two engines on the same URL: a writer, whose every
transaction is one command (BEGIN IMMEDIATE on SQLite), and a reader that
runs in autocommit, so a point read costs one round trip. A third, optional
engine reads from a replica: only reads that may lag the primary use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError

from app.db.backend import Backend, backend_of
from app.errors import ConcurrencyConflict, Unavailable


@dataclass(frozen=True)
class Database:
    writer: Engine
    reader: Engine
    #: A read replica, for the reads that accept its replication lag.
    replica: Engine | None = None

    @cached_property
    def backend(self) -> Backend:
        return backend_of(self.writer)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction; commits on success, rolls back on error.

        A deadlock or serialization failure is a lost race, raised as
        `ConcurrencyConflict` like any other: the command is decided again.
        """
        with _classified(self.backend, lost_race=True), self.writer.begin() as conn:
            yield conn

    @contextmanager
    def write_alone(self) -> Iterator[Connection]:
        """A connection in autocommit, for a write that is one statement and
        so its own transaction (`Backend.fuse_first_append`): no BEGIN and
        COMMIT round trips. A lost race is `ConcurrencyConflict`, as in `write`.
        Only where that statement exists: on PostgreSQL."""
        with _classified(self.backend, lost_race=True), self.reader.connect() as conn:
            yield conn

    @contextmanager
    def read(self, *, replica: bool = False) -> Iterator[Connection]:
        """A connection for reads, in autocommit: no BEGIN/COMMIT round trips.

        `replica=True` lets the read replica answer, when one is configured:
        it may not yet show what the primary committed a moment ago.
        """
        engine = self.replica if replica and self.replica is not None else self.reader
        with _classified(self.backend), engine.connect() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only view in which several queries agree (verify, export)."""
        with _classified(self.backend), self.backend.snapshot(self.writer, self.reader) as conn:
            yield conn

    def dispose(self) -> None:
        self.writer.dispose()
        self.reader.dispose()
        if self.replica is not None:
            self.replica.dispose()


@contextmanager
def _classified(backend: Backend, *, lost_race: bool = False) -> Iterator[None]:
    """Driver errors that mean something to the caller: a database that cannot
    be reached is `Unavailable`; in a write (`lost_race`), a deadlock or
    serialization failure is a `ConcurrencyConflict`, decided again."""
    try:
        yield
    except DBAPIError as exc:
        if backend.is_unavailable(exc):
            raise Unavailable("the database is unavailable; try again shortly") from exc
        if lost_race and backend.is_lost_race(exc):
            raise ConcurrencyConflict(f"lost a race: {type(exc.orig).__name__}") from exc
        raise


def ensure_sqlite_folder(url: str) -> bool:
    """Create a SQLite file's folder; True if `url` is SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return True


def open_database(
    url: str, *, pool_size: int = 20, echo: bool = False, replica_url: str | None = None
) -> Database:
    """Build the writer and reader engines for `url`, and a reader for
    `replica_url` if given.

    For a SQLite file the parent folder is created, so the embedded default
    needs nothing by hand.
    """
    return Database(
        writer=_engine(url, pool_size, echo, writer=True),
        reader=_engine(url, pool_size, echo, writer=False),
        replica=_engine(replica_url, pool_size, echo, writer=False) if replica_url else None,
    )


def _engine(url: str, pool_size: int, echo: bool, *, writer: bool) -> Engine:
    """A writer's or a reader's engine; on PostgreSQL readers run in autocommit."""
    options: dict[str, Any] = {"echo": echo, "pool_size": pool_size, "max_overflow": 0}
    if not ensure_sqlite_folder(url):
        options["pool_timeout"] = 10
        if writer:
            # No rollback when a writer connection goes back to the pool:
            # every one is handed out by `begin()` (here or in the backend's
            # `snapshot`), whose Connection has already committed or rolled
            # back, and a Connection closed mid-transaction rolls back itself.
            options["pool_reset_on_return"] = None
        else:
            options["isolation_level"] = "AUTOCOMMIT"
            # Nor for a reader: in autocommit no transaction outlives its
            # statement. psycopg2's rollback would still let go of the GIL,
            # which under load cost every read a thread switch.
            options["pool_reset_on_return"] = None
        # JSONB keeps the value, not the text: orjson writes it, in C (every
        # append sends two documents, its data and the row's params).
        options["json_serializer"] = _json_text
    engine = create_engine(url, **options)
    backend_of(engine).configure_engine(engine, writer=writer)
    return engine


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
