"""The one place that knows SQLite from PostgreSQL.

It offers a small vocabulary (STYLE §4): column types, `upsert`, the
feed's visibility rule and cursor, `SKIP LOCKED` claiming, the database
clock, and SQLite's connection pragmas. Everything else stays portable.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Insert,
    Integer,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    cast,
    event,
    func,
    select,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import TypeDecorator

#: Primary keys: BIGINT on PostgreSQL, INTEGER on SQLite (only an INTEGER
#: primary key auto-increments there).
IdType = BigInteger().with_variant(Integer(), "sqlite")

#: JSONB on PostgreSQL, JSON (text) on SQLite.
JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that always come back timezone-aware, in UTC.

    SQLite keeps no zone, so values are stored as naive UTC there and made
    aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite rows written by the database clock
            value = datetime.fromisoformat(value)
        when: datetime = value
        if when.tzinfo is None:
            return when.replace(tzinfo=UTC)
        return when.astimezone(UTC)


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def clock(on_postgres: bool) -> ColumnElement[Any]:
    """The database clock, with sub-second precision on both engines."""
    if on_postgres:
        return func.now()
    return func.strftime("%Y-%m-%d %H:%M:%f", "now")


def locked_clock(on_postgres: bool) -> ColumnElement[datetime] | None:
    """The database clock as a command reads it with its locked row, or None
    where appends are not fused with their projection.

    PostgreSQL: `clock_timestamp()`, the time of reading, not of the
    transaction's start: a command that waited for another's row lock must
    record its event after that other's. The command's event is recorded at
    this time (bound into the append), so the projected row can be folded
    before the append (see `insert_then_upsert`). SQLite's appends take the
    clock of their own statement.
    """
    if on_postgres:
        return type_coerce(func.clock_timestamp(), UTCDateTime())
    return None


def tx_id_expr(conn: Connection) -> ColumnElement[Any] | None:
    """PostgreSQL's current transaction id (for the feed's order); None on SQLite."""
    return transaction_id(is_postgres(conn))


def transaction_id(on_postgres: bool) -> ColumnElement[Any] | None:
    if on_postgres:
        # xid8 has no direct cast to bigint; text is the documented bridge.
        return cast(cast(func.pg_current_xact_id(), postgresql.TEXT), BigInteger)
    return None


def upsert(conn: Connection, table: Table, values: dict[str, Any], key: str | list[str]) -> None:
    """Execute INSERT … ON CONFLICT (key) DO UPDATE of every other given column."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    _upsert_statement(conn.dialect.name, table, tuple(values), keys).run(conn, values)


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    dialect_name: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> DriverStatement:
    # Built once per shape: constructing it (its `excluded` alias above all)
    # cost more than the round trip on the hot path. `inline()`: nothing
    # reads the generated key back, so no implicit RETURNING of it.
    mod = postgresql if dialect_name == "postgresql" else sqlite
    stmt = mod.insert(table).values({name: bindparam(name) for name in columns}).inline()
    updates = {name: stmt.excluded[name] for name in columns if name not in keys}
    return DriverStatement(
        stmt.on_conflict_do_update(index_elements=list(keys), set_=updates), prepare=True
    )


def insert_then_upsert(
    dialect_name: str,
    insert: Insert,
    table: Table,
    columns: Sequence[str],
    key: str,
    from_inserted: Mapping[str, str],
    *,
    prefix: str,
) -> DriverStatement | None:
    """`insert` … RETURNING and an upsert of one row into `table`, as one
    statement that returns what `insert` returns; None where the database
    cannot do that (SQLite).

    On PostgreSQL this is a data-modifying WITH: the upsert runs after the
    insert, in the same statement, and an error in either fails both. It
    saves the separate upsert's round trip, which on this box costs a
    command about as much CPU (in the kernel's loopback send) as the
    Python around it.

    The upserted row's `columns` are bound as `<prefix><column>`, except
    those in `from_inserted`, which maps a column to the name of a value
    that `insert` returns (e.g. the position the database gave an event).
    The prefix keeps the two rows' parameters apart where column names
    meet (`img_name`, `version`). On a conflict on `key` every other
    column is updated.
    """
    if dialect_name != "postgresql":
        return None
    inserted = insert.cte("inserted")
    values: dict[str, Any] = {}
    for name in columns:
        if name in from_inserted:
            values[name] = select(inserted.c[from_inserted[name]]).scalar_subquery()
        else:
            values[name] = bindparam(f"{prefix}{name}", type_=table.c[name].type)
    upsert = postgresql.insert(table).values(values).inline()
    upsert = upsert.on_conflict_do_update(
        index_elements=[key],
        set_={name: upsert.excluded[name] for name in columns if name != key},
    )
    return DriverStatement(select(*inserted.c).add_cte(upsert.cte("upserted")), prepare=True)


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint that `exc` violated, where the driver says
    (PostgreSQL); None where it does not (SQLite)."""
    diag = getattr(exc.orig, "diag", None)  # psycopg2's error details
    name = getattr(diag, "constraint_name", None)
    return str(name) if name is not None else None


# --- hot statements on the driver's cursor --------------------------------------


class DriverStatement:
    """A Core statement compiled once, prepared on the server, and run
    straight on the DBAPI cursor.

    Why (issue 5, measured on this box): `Connection.execute` spends about
    70 µs of Python per statement (execution context, result metadata,
    events) around the driver's own 15 µs, and under the GIL that Python
    is what caps concurrent writers. And without a prepared statement
    PostgreSQL parses and plans each statement anew: for a command's load
    and append that was about 300 µs of server CPU per command, on the
    same two cores as the clients.

    What stays as with `Connection.execute`: the SQL is compiled from Core
    by the connection's dialect; parameters and results pass through the
    columns' type processors; a driver error leaves as SQLAlchemy's
    `DBAPIError` subclass (`IntegrityError`, …), the connection invalidated
    first if it was a disconnect. What is skipped: execution events (so
    `echo` does not show these statements) and the compiled cache, which
    this object replaces.

    With `prepare=True` the statement is PREPAREd on each connection the
    first time it runs there (PostgreSQL keeps it for the session, through
    rollbacks, and plans it again by name after DDL such as a rebuild's
    table swap). Each connection records what it has prepared in its pool
    `info`, which a reconnect clears. Only for statements whose outcome
    does not depend on their snapshot, such as inserts and upserts (their
    conflict checks see the latest committed rows): PostgreSQL takes an
    EXECUTE's snapshot before it waits for its locks, so a prepared read
    that waited behind a rebuild's swap would see the table as it was
    before the swap's last pass. A pooler that shares server sessions
    between clients per transaction (PgBouncer's transaction mode) would
    need its prepared-statement support turned on.

    Only on PostgreSQL, inside a transaction (the writer's) or on an
    autocommit connection (the reader's); anywhere else `run` is plain
    `Connection.execute`. A read is never to be prepared: it too can wait
    behind a rebuild's swap, with a snapshot taken before it (see above).
    """

    def __init__(self, statement: Select[Any] | Insert, *, prepare: bool = False) -> None:
        self.statement = statement
        self.prepare = prepare
        self._compiled: _Compiled | None = None

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Execute with `params`; the rows it returns (none for plain DML)."""
        if conn.dialect.name != "postgresql" or not (conn.in_transaction() or _autocommit(conn)):
            result = conn.execute(self.statement, params)
            return result.all() if result.returns_rows else []
        compiled = self._compiled or self._compile(conn.dialect)
        bound = dict(params)
        for name, process in compiled.bind_processors:
            bound[name] = process(bound[name])
        pooled = conn.connection
        assert pooled.dbapi_connection is not None, "a connection in a transaction is checked out"
        prepared: set[str] = pooled.info.setdefault(_PREPARED, set())
        cursor = pooled.dbapi_connection.cursor()
        try:
            if compiled.prepare is not None and compiled.name not in prepared:
                cursor.execute(compiled.prepare)
                prepared.add(compiled.name)
            cursor.execute(compiled.execute, bound)
            if cursor.description is None:
                return []
            rows = cursor.fetchall()
            processors = compiled.result_processors or self._result_processors(conn, cursor)
        except conn.dialect.loaded_dbapi.Error as err:
            raise _wrapped(conn, compiled.sql, bound, err, cursor) from err
        finally:
            cursor.close()
        if not rows or not any(processors):
            return rows
        return [
            [value if p is None else p(value) for p, value in zip(processors, row, strict=True)]
            for row in rows
        ]

    def sql(self, dialect: Dialect) -> str:
        """The SQL this statement sends, with the driver's `%(name)s` placeholders."""
        return (self._compiled or self._compile(dialect)).sql

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        if not all(param.required for param in compiled.binds.values()):
            # `run` binds only what the caller gives, not values kept in the statement.
            raise ValueError("a DriverStatement takes every parameter from its caller")
        procs = []
        for name, param in compiled.binds.items():
            process = param.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                procs.append((name, process))
        sql = compiled.string
        names = list(compiled.binds)
        name = f"vidledger_{hashlib.sha1(sql.encode()).hexdigest()[:20]}"
        arguments = ", ".join(f"%({n})s" for n in names)
        if self.prepare:
            prepare: str | None = f"PREPARE {name} AS {_numbered(sql, names)}"
            execute = f"EXECUTE {name} ({arguments})" if names else f"EXECUTE {name}"
        else:
            prepare, execute = None, sql
        self._compiled = _Compiled(
            sql=sql,
            name=name,
            prepare=prepare,
            execute=execute,
            bind_processors=tuple(procs),
        )
        return self._compiled

    def _result_processors(self, conn: Connection, cursor: Any) -> list[Any]:
        """Each result column's processor, as Core picks it: by the column's
        type and the driver's type code of the value (known after a first
        execution)."""
        assert self._compiled is not None
        columns = list(self.statement.exported_columns)  # a SELECT's, or the RETURNING
        processors = [
            column.type.dialect_impl(conn.dialect).result_processor(conn.dialect, described[1])
            for column, described in zip(columns, cursor.description, strict=True)
        ]
        self._compiled.result_processors = processors
        return processors


def _autocommit(conn: Connection) -> bool:
    """Whether psycopg2 runs each statement on its own (the reader engine)."""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


#: The key, in a pooled connection's `info`, of the statements it has prepared.
_PREPARED = "vidledger.prepared"

#: A psycopg2 placeholder `%(name)s`, or an escaped percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def _numbered(sql: str, names: list[str]) -> str:
    """`sql` as PREPARE wants it: `$1`, `$2`, … for the driver's named
    placeholders (numbered as in `names`), and `%%` back to `%`."""
    number = {name: i for i, name in enumerate(names, start=1)}

    def replace(match: re.Match[str]) -> str:
        return "%" if match.group(0) == "%%" else f"${number[match.group(1)]}"

    numbered = _PLACEHOLDER.sub(replace, sql)
    if "%(" in numbered:
        raise ValueError("a parameter name the driver escaped: cannot prepare this statement")
    return numbered


@dataclass
class _Compiled:
    #: The statement for the driver, as Core compiled it (named in errors).
    sql: str
    #: The server-side name it is prepared under, from its text.
    name: str
    #: The PREPARE, for a statement run prepared; else None.
    prepare: str | None
    #: What runs it: an EXECUTE of the prepared statement, or `sql` itself.
    execute: str
    bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: Filled in by the first execution that returns rows.
    result_processors: list[Any] | None = None


def _wrapped(
    conn: Connection, sql: str, params: Mapping[str, Any], err: Any, cursor: Any
) -> DBAPIError:
    """A driver error as `Connection.execute` would raise it."""
    dbapi_conn = conn.connection.dbapi_connection
    lost = conn.dialect.is_disconnect(err, dbapi_conn, cursor)
    if lost:
        conn.invalidate(err)
    wrapped = DBAPIError.instance(
        sql,
        params,
        err,
        conn.dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )
    assert isinstance(wrapped, DBAPIError)
    return wrapped


def insert_ignore(conn: Connection, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING, for rows that may already exist."""
    mod = postgresql if is_postgres(conn) else sqlite
    return mod.insert(table).on_conflict_do_nothing()


def skip_locked(conn: Connection, query: Select[Any]) -> Select[Any]:
    """Claiming: `FOR UPDATE SKIP LOCKED` on PostgreSQL.

    SQLite needs nothing: its writers are serialized by BEGIN IMMEDIATE.
    """
    if is_postgres(conn):
        return query.with_for_update(skip_locked=True)
    return query


# --- the global feed (DESIGN §3) -------------------------------------------


def feed_filter(
    conn: Connection,
    events: Table,
    after: str | None,
    *,
    in_flight_possible: bool = True,
) -> ColumnElement[bool]:
    """Rows a feed reader may see after cursor `after`, without ever skipping one.

    PostgreSQL: only transactions older than every one still in flight
    (tx_id < snapshot xmin), ordered by (tx_id, position). SQLite: writes are
    serial, so `position` alone is a gap-free order. A caller that holds a
    lock excluding every appender passes `in_flight_possible=False`: then
    nothing can commit late, and the snapshot rule would only wait on
    unrelated transactions.
    """
    if is_postgres(conn):
        # The snapshot functions have no Core equivalent worth wrapping.
        visible: ColumnElement[bool] = events.c.tx_id < text(
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        if not in_flight_possible:
            visible = events.c.tx_id.is_not(None)
        if after is None:
            return visible
        tx, pos = parse_cursor(conn, after)
        return and_(visible, tuple_(events.c.tx_id, events.c.position) > tuple_(tx, pos))
    if after is None:
        return events.c.position > 0
    _, pos = parse_cursor(conn, after)
    return events.c.position > pos


def feed_hidden(conn: Connection, events: Table) -> ColumnElement[bool] | None:
    """Committed rows that feed readers cannot see yet, or None where there are none.

    PostgreSQL: rows of transactions not older than the oldest one still in
    flight (the complement of `feed_filter`); a long transaction anywhere on
    the server holds them back. SQLite's serial writes hide nothing.
    """
    if is_postgres(conn):
        return events.c.tx_id >= text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    return None


def feed_order(conn: Connection, events: Table) -> list[Any]:
    if is_postgres(conn):
        return [events.c.tx_id, events.c.position]
    return [events.c.position]


def make_cursor(tx_id: int | None, position: int) -> str:
    """Opaque to clients: `<tx>.<position>` on PostgreSQL, `<position>` on SQLite."""
    return f"{tx_id}.{position}" if tx_id is not None else str(position)


def parse_cursor(conn: Connection, cursor: str) -> tuple[int, int]:
    """Raises ValueError for a cursor this database did not make."""
    parts = cursor.split(".")
    if is_postgres(conn):
        if len(parts) != 2:
            raise ValueError("not a cursor of this feed")
        tx, pos = int(parts[0]), int(parts[1])
    else:
        if len(parts) != 1:
            raise ValueError("not a cursor of this feed")
        tx, pos = 0, int(parts[0])
    if not (0 <= tx < 2**63 and 0 <= pos < 2**63):
        raise ValueError("not a cursor of this feed")
    return tx, pos


def in_list(conn: Connection, column: ColumnElement[Any], values: list[str]) -> Any:
    """`column IN (…)`; on PostgreSQL `= ANY(array)`, one bound value however many."""
    if is_postgres(conn):
        return column == any_(cast(values, postgresql.ARRAY(String)))
    return column.in_(values)


# --- engines ------------------------------------------------------------------


def configure_engine(engine: Engine, *, writer: bool) -> None:
    """Per-connection setup that differs by engine.

    SQLite: WAL, a busy timeout and foreign keys on every connection, and
    writers begin with BEGIN IMMEDIATE so that write transactions are serial
    (the feed's gap-free rule and the single-writer claim depend on it).
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite: we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


#: SQLSTATEs of a server that is going away or not taking connections yet:
#: admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


#: SQLSTATEs of a transaction that lost a race: serialization_failure, deadlock_detected.
_LOST_RACE_SQLSTATES = frozenset({"40001", "40P01"})


def is_lost_race(exc: DBAPIError) -> bool:
    """True when the database rolled the transaction back to break a deadlock
    or a serialization conflict: trying it again may succeed."""
    return getattr(exc.orig, "pgcode", None) in _LOST_RACE_SQLSTATES


def is_unavailable(exc: DBAPIError) -> bool:
    """True when `exc` says the database cannot be reached right now (down,
    restarting, the connection lost), not that the statement was refused.

    SQLAlchemy flags a lost connection (`connection_invalidated`). A failed
    *connect* is not flagged: psycopg2 raises it as an OperationalError with
    no SQLSTATE (refused, reset, "the database system is shutting down" or
    "starting up"), while errors a live server sends always carry one.
    """
    if exc.connection_invalidated:
        return True
    # Only psycopg2's errors have a `pgcode`; SQLite's stay the caller's to handle.
    if not isinstance(exc, OperationalError) or not hasattr(exc.orig, "pgcode"):
        return False
    code: str | None = getattr(exc.orig, "pgcode", None)
    return code is None or code.startswith("08") or code in _UNAVAILABLE_SQLSTATES


def feed_start_after_snapshot(conn: Connection, events: Table) -> tuple[ColumnElement[bool], str]:
    """A prefix of the log that is complete now, and the feed cursor just past it.

    PostgreSQL: every transaction older than the snapshot's xmin has ended,
    so `tx_id < xmin` is a prefix no late commit can join. SQLite: the
    highest position, since writes are serial.
    """
    if is_postgres(conn):
        xmin = int(
            conn.execute(
                text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            ).scalar_one()
        )
        return events.c.tx_id < xmin, make_cursor(xmin - 1, 2**63 - 1)
    top = int(conn.execute(select(func.coalesce(func.max(events.c.position), 0))).scalar_one())
    return events.c.position <= top, make_cursor(None, top)


def feed_up_to(conn: Connection, events: Table, cursor: str) -> ColumnElement[bool]:
    """Rows at or before `cursor` in feed order (a prefix that is complete)."""
    tx, pos = parse_cursor(conn, cursor)
    if is_postgres(conn):
        return tuple_(events.c.tx_id, events.c.position) <= tuple_(tx, pos)
    return events.c.position <= pos


def bytewise(conn: Connection, column: ColumnElement[str]) -> ColumnElement[str]:
    """Order strings by code point on both engines, as Python compares them
    (SQLite's default BINARY collation already does)."""
    return column.collate("C") if is_postgres(conn) else column


def constraint_names_are_global(conn: Connection) -> bool:
    """PostgreSQL backs constraints with indexes, whose names are per schema."""
    return is_postgres(conn)


def lock_for_swap(conn: Connection, live: str, events: Table, timeout_s: float) -> None:
    """Hold every writer back until commit, for a rebuild's final pass and swap.

    PostgreSQL: the live status table first, then the log, in the order every
    command touches them (read the row, append, upsert); the other order
    deadlocks with a command that has read its row and waits to append.
    Readers of the status table wait (never fail) for the few milliseconds
    until commit. `lock_timeout` bounds the wait behind a long transaction,
    during which everyone queued behind this lock would wait too; the caller
    catches `LockTimeout` and tries again later. SQLite's write transaction
    (BEGIN IMMEDIATE) already excludes every other writer.
    """
    if not is_postgres(conn):
        return
    # LOCK and SET LOCAL have no Core constructs.
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'"))
    try:
        conn.execute(text(f'LOCK TABLE "{live}" IN ACCESS EXCLUSIVE MODE'))
        conn.execute(text(f'LOCK TABLE "{events.name}" IN SHARE ROW EXCLUSIVE MODE'))
    except OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) == "55P03":  # lock_not_available
            raise LockTimeout(str(exc.orig).strip()) from exc
        raise


class LockTimeout(Exception):
    """A lock could not be had within its timeout."""


def swap_in(conn: Connection, shadow: Table, live_name: str) -> None:
    """Replace table `live_name` by `shadow`, inside the caller's transaction.

    Index and constraint names end up exactly as the live table's were.
    """
    suffix = shadow.name.removeprefix(live_name)
    conn.execute(text(f'DROP TABLE "{live_name}"'))
    conn.execute(text(f'ALTER TABLE "{shadow.name}" RENAME TO "{live_name}"'))
    if is_postgres(conn):
        for ix in shadow.indexes:
            assert ix.name is not None
            new = str(ix.name).removesuffix(suffix)
            conn.execute(text(f'ALTER INDEX "{ix.name}" RENAME TO "{new}"'))
        for cons in shadow.constraints:
            if cons.name and str(cons.name).endswith(suffix):
                new = str(cons.name).removesuffix(suffix)
                conn.execute(
                    text(f'ALTER TABLE "{live_name}" RENAME CONSTRAINT "{cons.name}" TO "{new}"')
                )
        conn.execute(
            text(f'ALTER SEQUENCE IF EXISTS "{shadow.name}_id_seq" RENAME TO "{live_name}_id_seq"')
        )
    else:
        # SQLite cannot rename an index: make the live names anew. Constraint
        # names live inside the table's DDL and need no global uniqueness.
        for ix in shadow.indexes:
            assert ix.name is not None
            conn.execute(text(f'DROP INDEX "{ix.name}"'))
            cols = ", ".join(f'"{c.name}"' for c in ix.columns)
            new = str(ix.name).removesuffix(suffix)
            conn.execute(text(f'CREATE INDEX "{new}" ON "{live_name}" ({cols})'))


@contextmanager
def snapshot(writer: Engine, reader: Engine) -> Iterator[Connection]:
    """A read-only connection whose queries all see one consistent snapshot.

    PostgreSQL: a REPEATABLE READ, read-only transaction. SQLite: a deferred
    BEGIN on the reader (WAL keeps its snapshot without blocking writers).
    """
    if writer.dialect.name == "postgresql":
        with writer.connect() as conn:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                yield conn
        return
    with reader.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.exec_driver_sql("ROLLBACK")


# --- bulk paths for rebuilds (PostgreSQL COPY) ------------------------------------


def supports_copy(conn: Connection) -> bool:
    return is_postgres(conn)


_UNESCAPE = {
    "\\": "\\",
    "t": "\t",
    "n": "\n",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


def _unescape(field: str) -> str | None:
    """A field of COPY's text format: `\\N` is NULL, backslash escapes the rest."""
    if field == "\\N":
        return None
    if "\\" not in field:
        return field
    out = []
    chars = iter(field)
    for ch in chars:
        out.append(_UNESCAPE.get(next(chars, ""), "") if ch == "\\" else ch)
    return "".join(out)


class _LineSink:
    """A file-like target for COPY … TO STDOUT: one `write` per row."""

    def __init__(self, on_row: Callable[[list[str | None]], None], escaped: frozenset[int]) -> None:
        self.on_row = on_row
        self.escaped = escaped

    def write(self, data: bytes | str) -> int:
        line = data.decode() if isinstance(data, bytes) else data
        fields: list[str | None] = line[:-1].split("\t")  # type: ignore[assignment]
        if "\\" in line:  # rare: only then can a field hold an escape or a NULL
            for i in self.escaped:
                fields[i] = _unescape(fields[i])  # type: ignore[arg-type]
        self.on_row(fields)
        return len(data)


def copy_out(
    conn: Connection,
    query: Select[Any],
    on_row: Callable[[list[str | None]], None],
    *,
    escaped: frozenset[int],
) -> None:
    """Stream `query`'s rows as text fields through COPY (PostgreSQL only).

    Runs inside `conn`'s transaction, so it sees that snapshot. Timestamps
    come out in UTC. Only the fields at indexes `escaped` are unescaped (and
    may be NULL); the caller promises the others are plain, NOT NULL text
    such as numbers, names of statuses and timestamps.
    """
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    # COPY has no Core construct; the query itself is compiled from Core above.
    conn.execute(text("SET LOCAL timezone = 'UTC'"))
    # A plain ordered scan: JIT compilation only adds latency before the first row.
    conn.execute(text("SET LOCAL jit = off"))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # psycopg2
    try:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT", _LineSink(on_row, escaped))
    finally:
        cursor.close()


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    # Checked in order of how often a status row holds each type.
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is str:
        text_value: str = value
    elif kind is bool:
        return "t" if value else "f"
    elif kind is int or kind is float:
        return str(value)
    elif kind is datetime:
        return str(value.isoformat())
    elif kind is dict or kind is list:
        text_value = orjson.dumps(value).decode()
    else:
        text_value = str(value)
    return text_value.translate(_COPY_ESCAPES)


COPY_NULL = "\\N"


def copy_bool(value: bool | None) -> str:
    return COPY_NULL if value is None else ("t" if value else "f")


COPY_ESCAPES = _COPY_ESCAPES


def copy_json(value: Any) -> str:
    return COPY_NULL if value is None else orjson.dumps(value).decode().translate(_COPY_ESCAPES)


def copy_in(
    conn: Connection, table: Table, columns: list[str], rows: Iterable[list[Any] | str]
) -> None:
    """Bulk-insert `rows` with COPY … FROM STDIN, for rows that can be made
    again if lost (the transaction commits without waiting for its WAL).

    A row is its values in `columns` order, or a line already in COPY's text
    format (made with the `copy_*` helpers), for callers on a hot path.
    """
    buffer = io.StringIO()
    for row in rows:
        buffer.write(row if isinstance(row, str) else "\t".join([_copy_text(v) for v in row]))
        buffer.write("\n")
    buffer.seek(0)
    cols = ", ".join(f'"{c}"' for c in columns)
    # Bulk rows that can always be made again (a rebuild's shadow) need not
    # wait for their WAL to reach disk; the commit that matters still does.
    conn.execute(text("SET LOCAL synchronous_commit = off"))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # psycopg2
    try:
        cursor.copy_expert(f'COPY "{table.name}" ({cols}) FROM STDIN', buffer)
    finally:
        cursor.close()
