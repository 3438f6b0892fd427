"""The storage backend protocol: everything that differs between databases.

There is one implementation per database, `app/db/postgres/` and
`app/db/sqlite/`, and code above them never asks which one it runs on: it
calls `backend_of(conn)` (or holds `Database.backend`) and uses the
vocabulary below. The contract tests in `tests/contract/` hold every
backend to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, Insert, Row, Select, Table
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.expression import ColumnElement

if TYPE_CHECKING:
    from app.db.statement import Statement


class LockTimeout(Exception):
    """A lock could not be had within its timeout."""


class Backend(Protocol):
    """One database's way of doing what vidledger needs of storage."""

    #: The SQLAlchemy dialect name this backend serves.
    name: str
    #: Whether constraint names must be unique per schema (a shadow table
    #: then needs names of its own until the swap).
    constraint_names_are_global: bool
    #: Whether `copy_in` and `copy_out` work (bulk paths of a rebuild).
    supports_copy: bool
    #: Whether a write that is one statement runs alone, in autocommit
    #: (`Database.write_alone`, `fuse_first_append`).
    writes_alone: bool

    def __hash__(self) -> int:  # statements are built once per backend, cached by it
        ...

    # --- running statements ------------------------------------------------------

    def run(
        self, statement: Statement, conn: Connection, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Execute a named statement; its rows (none for plain DML). Driver
        errors leave as SQLAlchemy's `DBAPIError` subclasses."""
        ...

    def configure_engine(self, engine: Engine, *, writer: bool) -> None:
        """Per-connection setup of an engine this backend serves."""
        ...

    def snapshot(self, writer: Engine, reader: Engine) -> AbstractContextManager[Connection]:
        """A read-only connection whose queries all see one consistent snapshot."""
        ...

    # --- appending and projecting --------------------------------------------------

    def clock(self) -> ColumnElement[Any]:
        """The database clock, with sub-second precision, as an append records it."""
        ...

    def locked_clock(self) -> ColumnElement[datetime] | None:
        """The clock a command reads with its locked row, when appends are
        fused with their projection (`fuse_insert_and_upsert`); else None."""
        ...

    def transaction_id(self) -> ColumnElement[Any] | None:
        """The current transaction's id (the feed's order), where the feed uses one."""
        ...

    def fuse_insert_and_upsert(
        self,
        insert: Insert,
        table: Table,
        columns: Sequence[str],
        key: str,
        from_inserted: Mapping[str, str],
        *,
        prefix: str,
        also: Insert | None = None,
    ) -> Statement | None:
        """`insert` … RETURNING and an upsert of one row into `table`, as one
        statement that returns what `insert` returns; None where the
        database cannot do that.

        The upserted row's `columns` are bound as `<prefix><column>`, except
        those in `from_inserted`, which maps a column to the name of a value
        that `insert` returns. On a conflict on `key` every other column is
        updated.

        `also`, another write (with parameter names of its own), runs in the
        same statement; one more column, `also_rows`, counts the rows it wrote.
        """
        ...

    def fuse_first_append(
        self,
        events: Table,
        bound: Sequence[str],
        caller: Select[Any],
        table: Table,
        columns: Sequence[str],
        key: str,
        from_inserted: Mapping[str, str],
        *,
        prefix: str,
        keep: Table | None = None,
        keep_prefix: str = "",
    ) -> Statement | None:
        """The first event of a stream with its projected row (and a kept
        answer) as one statement that runs alone, in autocommit; None where
        the database cannot (see the PostgreSQL backend)."""
        ...

    def upsert(
        self, conn: Connection, table: Table, values: dict[str, Any], key: str | list[str]
    ) -> None:
        """INSERT … ON CONFLICT (key) DO UPDATE of every other given column."""
        ...

    def upsert_statement(
        self,
        table: Table,
        values: Mapping[str, Any],
        key: Sequence[str],
        *,
        only_if: ColumnElement[bool] | None = None,
    ) -> Insert:
        """INSERT `values` (column name to expression) … ON CONFLICT (key) DO
        UPDATE of every other column, and only where `only_if` holds of the
        row already there, if given: a conflict it fails writes nothing."""
        ...

    def insert_ignore(self, table: Table) -> Insert:
        """INSERT … ON CONFLICT DO NOTHING, for rows that may already exist."""
        ...

    def update_rows(
        self,
        conn: Connection,
        table: Table,
        match: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        where: ColumnElement[bool] | None = None,
        returning: Sequence[ColumnElement[Any]] = (),
        same: Mapping[str, Any] | None = None,
    ) -> list[Row[Any]]:
        """UPDATE many rows of `table`, each to its own values: every row names
        the same columns; those in `match` find the row (with `where`, if
        given), the others are set; `same` sets columns to one value for all.
        As few round trips as the database allows. Returns `returning` of each
        row updated (none if not asked)."""
        ...

    def violated_constraint(self, exc: IntegrityError) -> str | None:
        """The name of the constraint `exc` violated, where the driver says."""
        ...

    # --- claiming -----------------------------------------------------------------

    def claim_due(self, query: Select[Any]) -> Select[Any]:
        """`query` (the oldest due row) made safe for concurrent claimers: its
        row locked, rows other claimers hold skipped."""
        ...

    def claim_due_among(
        self, query: Select[Any], column: ColumnElement[Any], values: list[str]
    ) -> Select[Any]:
        """`claim_due(query)` for only the rows whose `column` is one of
        `values`: the head of each value's queue read through an index that
        leads with (the filter, `column`), the oldest of those heads taken.
        `query` selects the row's key first and its order columns after it."""
        ...

    def in_list(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """`column IN (values)`, in the form this database plans best."""
        ...

    def in_bound(self, column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
        """`column` is one of the list bound as `name` when the statement runs:
        one statement text whatever the list's length (for a `Statement`)."""
        ...

    # --- the global feed (no event ever skipped) --------------------------------------

    def feed_visible(
        self, events: Table, after: str | None, *, in_flight_possible: bool = True
    ) -> ColumnElement[bool]:
        """Rows a feed reader may see after cursor `after`, without ever
        skipping one that commits late. A caller holding a lock that excludes
        every appender passes `in_flight_possible=False`. Raises ValueError
        for a cursor this backend did not make."""
        ...

    def feed_hidden(self, events: Table) -> ColumnElement[bool] | None:
        """Committed rows that feed readers cannot see yet; None where there are none."""
        ...

    def feed_order(self, events: Table) -> list[Any]:
        """The feed's order: gap-free for readers that follow `feed_visible`."""
        ...

    def feed_start_after_snapshot(
        self, conn: Connection, events: Table
    ) -> tuple[ColumnElement[bool], str]:
        """A prefix of the log that is complete now, and the cursor just past it."""
        ...

    def feed_up_to(self, events: Table, cursor: str) -> ColumnElement[bool]:
        """Rows at or before `cursor` in feed order."""
        ...

    def make_cursor(self, tx_id: int | None, position: int) -> str:
        """The opaque feed cursor of an event."""
        ...

    def parse_cursor(self, cursor: str) -> tuple[int, int]:
        """(tx, position) of a cursor; raises ValueError for one this backend did not make."""
        ...

    # --- rebuilds ---------------------------------------------------------------

    def bytewise(self, column: ColumnElement[str]) -> ColumnElement[str]:
        """`column`, ordered by code point as Python compares strings."""
        ...

    def lock_for_swap(self, conn: Connection, live: str, events: Table, timeout_s: float) -> None:
        """Hold every writer back until commit (raises `LockTimeout`)."""
        ...

    def swap_in(self, conn: Connection, shadow: Table, live_name: str) -> None:
        """Replace table `live_name` by `shadow`, names of indexes and constraints kept."""
        ...

    def copy_out(
        self,
        conn: Connection,
        query: Select[Any],
        on_row: Callable[[list[str | None]], None],
        *,
        escaped: frozenset[int],
    ) -> None:
        """Stream `query`'s rows as text fields (only where `supports_copy`)."""
        ...

    def copy_in(
        self, conn: Connection, table: Table, columns: list[str], rows: Iterable[list[Any] | str]
    ) -> None:
        """Bulk-insert rows that can be made again if lost (only where `supports_copy`)."""
        ...

    def start_listener(
        self, url: str, on_notify: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread | None:
        """Call `on_notify(to_status)` when another process appends (or `""`
        when the status is not known: wake anyway), until `stop` is set; None
        where the database cannot tell (then in-process hooks and polls are
        all there is)."""
        ...

    # --- failures -----------------------------------------------------------------

    def is_unavailable(self, exc: DBAPIError) -> bool:
        """Whether `exc` says the database cannot be reached right now."""
        ...

    def is_lost_race(self, exc: DBAPIError) -> bool:
        """Whether `exc` is a deadlock or serialization failure: trying again may succeed."""
        ...


_BACKENDS: dict[str, Backend] = {}


def backend_of(conn: Connection | Engine) -> Backend:
    """The backend of `conn`'s database (the one place that maps a dialect to one)."""
    name = conn.dialect.name
    found = _BACKENDS.get(name)
    if found is None:
        found = _load(name)
    return found


def _load(name: str) -> Backend:
    backend: Backend
    if name == "postgresql":
        from app.db.postgres import PostgresBackend

        backend = PostgresBackend()
    elif name == "sqlite":
        from app.db.sqlite import SqliteBackend

        backend = SqliteBackend()
    else:
        raise ValueError(f"no storage backend for {name!r} databases")
    _BACKENDS[name] = backend
    return backend
