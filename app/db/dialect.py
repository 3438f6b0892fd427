"""The one place that knows SQLite from PostgreSQL.

It offers a small vocabulary (STYLE §4): column types, `upsert`, the
feed's visibility rule and cursor, `SKIP LOCKED` claiming, the database
clock, and SQLite's connection pragmas. Everything else stays portable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Integer,
    Select,
    String,
    Table,
    and_,
    any_,
    cast,
    event,
    func,
    or_,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
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


def now_expr(conn: Connection) -> ColumnElement[Any]:
    """The database clock, with sub-second precision on both engines."""
    if is_postgres(conn):
        return func.now()
    return func.strftime("%Y-%m-%d %H:%M:%f", "now")


def tx_id_expr(conn: Connection) -> ColumnElement[Any] | None:
    """PostgreSQL's current transaction id (for the feed's order); None on SQLite."""
    if is_postgres(conn):
        # xid8 has no direct cast to bigint; text is the documented bridge.
        return cast(cast(func.pg_current_xact_id(), postgresql.TEXT), BigInteger)
    return None


def upsert(conn: Connection, table: Table, values: dict[str, Any], key: str | list[str]) -> Any:
    """INSERT … ON CONFLICT (key) DO UPDATE of every other given column."""
    keys = [key] if isinstance(key, str) else key
    mod = postgresql if is_postgres(conn) else sqlite
    stmt = mod.insert(table).values(**values)
    updates = {name: stmt.excluded[name] for name in values if name not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=updates)


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


def feed_filter(conn: Connection, events: Table, after: str | None) -> ColumnElement[bool]:
    """Rows a feed reader may see after cursor `after`, without ever skipping one.

    PostgreSQL: only transactions older than every one still in flight
    (tx_id < snapshot xmin), ordered by (tx_id, position). SQLite: writes are
    serial, so `position` alone is a gap-free order.
    """
    if is_postgres(conn):
        # The snapshot functions have no Core equivalent worth wrapping.
        visible = events.c.tx_id < text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        if after is None:
            return visible
        tx, pos = parse_cursor(conn, after)
        return and_(visible, tuple_(events.c.tx_id, events.c.position) > tuple_(tx, pos))
    if after is None:
        return events.c.position > 0
    _, pos = parse_cursor(conn, after)
    return events.c.position > pos


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


def due_filter(not_before: ColumnElement[Any], now: datetime) -> ColumnElement[bool]:
    return or_(not_before.is_(None), not_before <= now)


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
