"""Engines and transaction scopes, built only by a composition root.

A `Database` holds two engines on the same URL: a writer, whose every
transaction is one command (BEGIN IMMEDIATE on SQLite), and a reader that
runs in autocommit, so a point read costs one round trip. The reader could
point at a replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError

from app.db import dialect
from app.db.dialect import configure_engine
from app.errors import Unavailable


@dataclass(frozen=True)
class Database:
    writer: Engine
    reader: Engine

    @property
    def is_postgres(self) -> bool:
        return self.writer.dialect.name == "postgresql"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction; commits on success, rolls back on error."""
        with _unavailable_on_disconnect(), self.writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, in autocommit: no BEGIN/COMMIT round trips."""
        with _unavailable_on_disconnect(), self.reader.connect() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only view in which several queries agree (verify, export)."""
        with _unavailable_on_disconnect(), dialect.snapshot(self.writer, self.reader) as conn:
            yield conn

    def dispose(self) -> None:
        self.writer.dispose()
        self.reader.dispose()


@contextmanager
def _unavailable_on_disconnect() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if exc.connection_invalidated or _is_connect_error(exc):
            raise Unavailable("the database is unavailable; try again shortly") from exc
        raise


def _is_connect_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in ("could not connect", "connection refused", "server closed", "terminating")
    )


def ensure_sqlite_folder(url: str) -> bool:
    """Create a SQLite file's folder; True if `url` is SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return True


def open_database(url: str, *, pool_size: int = 20, echo: bool = False) -> Database:
    """Build the writer and reader engines for `url`.

    For a SQLite file the parent folder is created, so the embedded default
    needs nothing by hand.
    """
    if ensure_sqlite_folder(url):
        writer = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=0)
        reader = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=0)
    else:
        common = {"echo": echo, "pool_size": pool_size, "max_overflow": 0, "pool_timeout": 10}
        # No rollback when a writer connection goes back to the pool: every
        # one is handed out by `begin()` (here or in `dialect.snapshot`), whose
        # Connection has already committed or rolled back, and a Connection
        # closed mid-transaction rolls back itself. The pool's extra rollback
        # was a few percent of a command's Python under the GIL (issue 5).
        writer = create_engine(url, pool_reset_on_return=None, **common)
        reader = create_engine(url, isolation_level="AUTOCOMMIT", **common)
    configure_engine(writer, writer=True)
    configure_engine(reader, writer=False)
    return Database(writer=writer, reader=reader)
