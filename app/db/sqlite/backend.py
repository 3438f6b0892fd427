"""SqliteBackend: one writer at a time (BEGIN IMMEDIATE), so a position is a gap-free feed."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    bindparam,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.expression import ColumnElement

from app.db.statement import Statement

_MAX = 2**63

#: How long a new connection keeps trying to put the database in WAL mode.
_WAL_SECONDS = 30.0


def use_wal(cur: Any) -> None:
    """Put the database in WAL mode, which its file keeps once set.

    Switching takes the database's exclusive lock. Connections that switch
    at the same moment, as the first connections of a server do on a
    database that `db upgrade` left in rollback mode, deadlock on it, and
    SQLite answers "database is locked" at once, busy timeout or not. So
    look first (once one connection has switched, the rest find WAL), and
    look again after a lost switch."""
    deadline = time.monotonic() + _WAL_SECONDS
    while cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode=WAL")  # in memory: stays "memory"
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteBackend:
    """Write transactions are serial: the feed's order, the claim and the lock
    order all rest on that (`configure_engine`)."""

    name = "sqlite"
    constraint_names_are_global = False  # they live inside each table's DDL
    supports_copy = False
    writes_alone = False

    # --- running statements ------------------------------------------------------

    def run(
        self, statement: Statement, conn: Connection, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        result = conn.execute(statement.statement, params)
        return result.all() if result.returns_rows else []

    def configure_engine(self, engine: Engine, *, writer: bool) -> None:
        """WAL, a busy timeout and foreign keys on every connection; writers
        begin with BEGIN IMMEDIATE, so write transactions are serial."""

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite: we emit BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # The busy timeout first: switching to WAL takes a lock, and a
            # connection opened while another one writes would otherwise fail
            # at once with "database is locked".
            cur.execute("PRAGMA busy_timeout=30000")
            use_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        if writer:

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    @contextmanager
    def snapshot(self, writer: Engine, reader: Engine) -> Iterator[Connection]:
        """A deferred BEGIN on the reader: WAL keeps its snapshot without blocking writers."""
        with reader.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("ROLLBACK")

    # --- appending and projecting --------------------------------------------------

    def clock(self) -> ColumnElement[Any]:
        return func.strftime("%Y-%m-%d %H:%M:%f", "now")

    def locked_clock(self) -> ColumnElement[datetime] | None:
        return None  # appends take the clock of their own statement

    def transaction_id(self) -> ColumnElement[Any] | None:
        return None

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
        return None  # no data-modifying WITH in SQLite

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
        return None  # likewise

    def upsert(
        self, conn: Connection, table: Table, values: dict[str, Any], key: str | list[str]
    ) -> None:
        keys = (key,) if isinstance(key, str) else tuple(key)
        _upsert_statement(self, table, tuple(values), keys).run(conn, values)

    def upsert_statement(
        self,
        table: Table,
        values: Mapping[str, Any],
        key: Sequence[str],
        *,
        only_if: ColumnElement[bool] | None = None,
    ) -> Insert:
        stmt = sqlite.insert(table).values(dict(values))
        updates = {name: stmt.excluded[name] for name in values if name not in key}
        return stmt.on_conflict_do_update(index_elements=list(key), set_=updates, where=only_if)

    def insert_ignore(self, table: Table) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

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
        """executemany (or, to return rows, one execute per row): in-process,
        a round trip costs nothing."""
        if not rows:
            return []
        setting = [c for c in rows[0] if c not in match]
        statement = (
            update(table)
            .where(*(table.c[c] == bindparam(f"m_{c}") for c in match))
            .values({c: bindparam(f"s_{c}") for c in setting})
            .values(
                {
                    c: bindparam(f"same_{c}", v, type_=table.c[c].type)
                    for c, v in (same or {}).items()
                }
            )
        )
        if where is not None:
            statement = statement.where(where)
        params = [
            {**{f"m_{c}": r[c] for c in match}, **{f"s_{c}": r[c] for c in setting}} for r in rows
        ]
        if not returning:
            conn.execute(statement, params)
            return []
        statement = statement.returning(*returning)
        return [row for p in params for row in conn.execute(statement, p)]

    def violated_constraint(self, exc: IntegrityError) -> str | None:
        return None  # sqlite3 does not name it

    # --- claiming -----------------------------------------------------------------

    def claim_due(self, query: Select[Any]) -> Select[Any]:
        return query  # BEGIN IMMEDIATE already excludes every other claimer

    def claim_due_among(
        self, query: Select[Any], column: ColumnElement[Any], values: list[str]
    ) -> Select[Any]:
        return query.where(column.in_(values))  # one writer: nothing to skip

    def in_list(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        return column.in_(values)

    def in_bound(self, column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
        return column.in_(bindparam(name, expanding=True))

    # --- the global feed --------------------------------------------------------------

    def feed_visible(
        self, events: Table, after: str | None, *, in_flight_possible: bool = True
    ) -> ColumnElement[bool]:
        """Writes are serial, so `position` alone is a gap-free order."""
        if after is None:
            return events.c.position > 0
        _, pos = self.parse_cursor(after)
        return events.c.position > pos

    def feed_hidden(self, events: Table) -> ColumnElement[bool] | None:
        return None  # serial writes hide nothing

    def feed_order(self, events: Table) -> list[Any]:
        return [events.c.position]

    def feed_start_after_snapshot(
        self, conn: Connection, events: Table
    ) -> tuple[ColumnElement[bool], str]:
        top = int(conn.execute(select(func.coalesce(func.max(events.c.position), 0))).scalar_one())
        return events.c.position <= top, self.make_cursor(None, top)

    def feed_up_to(self, events: Table, cursor: str) -> ColumnElement[bool]:
        _, pos = self.parse_cursor(cursor)
        return events.c.position <= pos

    def make_cursor(self, tx_id: int | None, position: int) -> str:
        return str(position)

    def parse_cursor(self, cursor: str) -> tuple[int, int]:
        parts = cursor.split(".")
        if len(parts) != 1:
            raise ValueError("not a cursor of this feed")
        pos = int(parts[0])
        if not 0 <= pos < _MAX:
            raise ValueError("not a cursor of this feed")
        return 0, pos

    # --- rebuilds ---------------------------------------------------------------

    def bytewise(self, column: ColumnElement[str]) -> ColumnElement[str]:
        return column  # the default BINARY collation orders by code point already

    def lock_for_swap(self, conn: Connection, live: str, events: Table, timeout_s: float) -> None:
        return None  # the write transaction (BEGIN IMMEDIATE) excludes every other writer

    def swap_in(self, conn: Connection, shadow: Table, live_name: str) -> None:
        """SQLite cannot rename an index: the live names are made anew."""
        suffix = shadow.name.removeprefix(live_name)
        # DDL by name: no Core constructs for renames.
        conn.execute(text(f'DROP TABLE "{live_name}"'))
        conn.execute(text(f'ALTER TABLE "{shadow.name}" RENAME TO "{live_name}"'))
        for ix in shadow.indexes:
            assert ix.name is not None
            conn.execute(text(f'DROP INDEX "{ix.name}"'))
            cols = ", ".join(f'"{c.name}"' for c in ix.columns)
            new = str(ix.name).removesuffix(suffix)
            conn.execute(text(f'CREATE INDEX "{new}" ON "{live_name}" ({cols})'))

    def copy_out(
        self,
        conn: Connection,
        query: Select[Any],
        on_row: Callable[[list[str | None]], None],
        *,
        escaped: frozenset[int],
    ) -> None:
        raise NotImplementedError("SQLite has no COPY (supports_copy is False)")

    def copy_in(
        self, conn: Connection, table: Table, columns: list[str], rows: Iterable[list[Any] | str]
    ) -> None:
        raise NotImplementedError("SQLite has no COPY (supports_copy is False)")

    def start_listener(
        self, url: str, on_notify: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread | None:
        return None  # no probe: other processes' appends are found by the readers' polls

    # --- failures -----------------------------------------------------------------

    def is_unavailable(self, exc: DBAPIError) -> bool:
        return bool(exc.connection_invalidated)  # a file: no server to lose, only a connection

    def is_lost_race(self, exc: DBAPIError) -> bool:
        return False  # serial writers cannot deadlock


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    backend: SqliteBackend, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> Statement:
    values: dict[str, Any] = {name: bindparam(name) for name in columns}
    return Statement(backend.upsert_statement(table, values, keys).inline())
