"""PostgresBackend: the xmin feed, SKIP LOCKED claims, the fused append, COPY."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    text,
    true,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql.expression import ColumnElement

from app.db.backend import LockTimeout
from app.db.postgres import copy, fast, notify
from app.db.statement import Statement
from app.db.types import UTCDateTime


def _typed(name: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A parameter for `column`, cast to its type: in a SELECT's list (an
    INSERT … SELECT) the server would take an untyped one for text."""
    return cast(bindparam(name, type_=column.type), column.type)


#: SQLSTATEs of a server that is going away or not taking connections yet:
#: admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: SQLSTATEs of a transaction that lost a race: serialization_failure, deadlock_detected.
_LOST_RACE_SQLSTATES = frozenset({"40001", "40P01"})
#: The oldest transaction still in flight; the snapshot functions have no
#: Core equivalent worth wrapping.
_XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_MAX = 2**63


class PostgresBackend:
    """Writers are not serialized; the feed reads only what no late commit can join."""

    name = "postgresql"
    constraint_names_are_global = True  # constraints are backed by indexes, named per schema
    supports_copy = True
    writes_alone = True

    # --- running statements ------------------------------------------------------

    def run(
        self, statement: Statement, conn: Connection, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        return fast.run(statement, conn, params)

    def configure_engine(self, engine: Engine, *, writer: bool) -> None:
        return None  # psycopg2's defaults are what every connection needs

    @contextmanager
    def snapshot(self, writer: Engine, reader: Engine) -> Iterator[Connection]:
        """A REPEATABLE READ, read-only transaction."""
        with writer.connect() as conn:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                yield conn

    # --- appending and projecting --------------------------------------------------

    def clock(self) -> ColumnElement[Any]:
        return func.now()

    def locked_clock(self) -> ColumnElement[datetime]:
        """`clock_timestamp()`, the time of reading, not of the transaction's
        start: a command that waited for another's row lock records its event
        after that other's."""
        return type_coerce(func.clock_timestamp(), UTCDateTime())

    def transaction_id(self) -> ColumnElement[Any]:
        # xid8 has no direct cast to bigint; text is the documented bridge.
        return cast(cast(func.pg_current_xact_id(), postgresql.TEXT), BigInteger)

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
        """A data-modifying WITH: the upsert (and `also`) run with the insert,
        in the same statement, and an error in any fails all. It saves their
        round trips. The prefix keeps the two rows' parameters apart where
        column names meet (`img_name`, `version`)."""
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
        fused = select(*inserted.c).add_cte(upsert.cte("upserted"))
        if also is not None:
            written = also.returning(literal_column("1")).cte("also")
            counted = select(func.count()).select_from(written).scalar_subquery()
            fused = fused.add_columns(counted.label("also_rows"))
        return Statement(fused, prepare=True)

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
        """The first event of a stream, its projected row and (with `keep`)
        the answer kept under its key, in one statement that writes all or
        nothing, and may run alone in autocommit: one round trip.

        It writes only where `table` has no row under `key` and `caller`
        gives one (the event's `actor`), and returns no row otherwise. The
        event's `bound` columns are parameters, its `recorded_at` the clock
        at the insert; the row's `columns` are `<prefix><column>` but for
        `from_inserted` (as in `fuse_insert_and_upsert`). The kept answer's
        columns are `<keep_prefix><column>`, and its document takes, under
        each name in `<keep_prefix>stamped`, the event's `recorded_at` as
        `app.timestamps.rfc3339` writes it. A live answer already kept
        under the key (not expired) writes nothing at all.

        Returns the insert's `position`, `recorded_at`, `tx_id` and `actor`.
        The stream's UNIQUE(img_name, version) still decides a race: the
        loser's statement fails, and writes nothing."""
        c = table.c
        who = caller.subquery("caller")
        values = [_typed(n, events.c[n]) for n in bound if n != "actor"]
        tx_id = self.transaction_id()
        absent = ~select(c[key]).where(c[key] == _typed(f"{prefix}{key}", c[key])).exists()
        guards = [absent]
        if keep is not None:
            k = keep.c
            guards.append(
                ~select(k.key)
                .where(
                    k.img_name == bindparam(f"{keep_prefix}img_name", type_=k.img_name.type),
                    k.key == bindparam(f"{keep_prefix}key", type_=k.key.type),
                    k.created_at
                    >= bindparam(f"{keep_prefix}expired_before", type_=k.created_at.type),
                )
                .exists()
            )
        source = select(
            *values, who.c.actor, self.locked_clock().label("recorded_at"), tx_id.label("tx_id")
        ).where(*guards)
        names = [n for n in bound if n != "actor"] + ["actor", "recorded_at", "tx_id"]
        insert = (
            postgresql.insert(events)
            .from_select(names, source)
            .returning(events.c.position, events.c.recorded_at, events.c.tx_id, events.c.actor)
        )
        inserted = insert.cte("inserted")
        row = [
            inserted.c[from_inserted[n]].label(n)
            if n in from_inserted
            else _typed(f"{prefix}{n}", c[n]).label(n)
            for n in columns
        ]
        upsert = postgresql.insert(table).from_select(
            list(columns), select(*row).select_from(inserted)
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[key],
            set_={n: upsert.excluded[n] for n in columns if n != key},
        )
        fused = select(*inserted.c).add_cte(upsert.cte("upserted"))
        if keep is not None:
            kept = self._kept_first(keep, inserted, keep_prefix)
            fused = fused.add_cte(kept.cte("kept"))
        return Statement(fused, prepare=True, lock=(table,))

    def _kept_first(self, keep: Table, inserted: Any, prefix: str) -> Insert:
        """The answer kept by `fuse_first_append`, stamped with the event's time."""
        k = keep.c
        stamped = func.unnest(
            cast(
                bindparam(f"{prefix}stamped", type_=postgresql.ARRAY(Text)), postgresql.ARRAY(Text)
            )
        ).table_valued("name")
        stamp = self.rfc3339_text(inserted.c.recorded_at)
        patch = (
            select(
                func.coalesce(
                    func.jsonb_object_agg(stamped.c.name, stamp),
                    literal_column("'{}'::jsonb"),
                )
            )
            .select_from(stamped)
            .scalar_subquery()
        )
        response = cast(bindparam(f"{prefix}response", type_=postgresql.JSONB), postgresql.JSONB)
        body = response.op("||")(patch)
        plain = ("img_name", "key", "request_hash", "answer_status", "created_at")
        source = select(
            *[_typed(f"{prefix}{n}", k[n]).label(n) for n in plain],
            body.label("response"),
        ).select_from(inserted)
        insert = postgresql.insert(keep).from_select([*plain, "response"], source)
        return insert.on_conflict_do_update(
            index_elements=["img_name", "key"],
            set_={n: insert.excluded[n] for n in (*plain[2:], "response")},
        )

    @staticmethod
    def rfc3339_text(at: ColumnElement[Any]) -> ColumnElement[str]:
        """A timestamp as `app.timestamps.rfc3339` writes it: UTC, a `Z`, and
        microseconds only when there are any."""
        utc = func.timezone(literal_column("'UTC'"), at)
        whole = func.to_char(utc, literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS'"))
        micros = cast(func.date_part(literal_column("'microseconds'"), at), BigInteger)
        fraction = case(
            (micros % literal_column("1000000") == literal_column("0"), literal_column("''")),
            else_=func.to_char(utc, literal_column("'.US'")),
        )
        return func.concat(whole, fraction, literal_column("'Z'"))

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
        stmt = postgresql.insert(table).values(dict(values))
        updates = {name: stmt.excluded[name] for name in values if name not in key}
        return stmt.on_conflict_do_update(index_elements=list(key), set_=updates, where=only_if)

    def insert_ignore(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

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
        """One `UPDATE … FROM unnest(…)`: one round trip for all the rows, and
        one statement text whatever their number (compiled once, then cached:
        a VALUES list of N rows would be compiled anew for every N)."""
        if not rows:
            return []
        names = list(rows[0])
        arrays = [
            cast(bindparam(f"rows_{n}", [r[n] for r in rows]), postgresql.ARRAY(table.c[n].type))
            for n in names
        ]
        given = func.unnest(*arrays).table_valued(*names).render_derived(name="given")
        statement = (
            update(table)
            .where(*(table.c[n] == given.c[n] for n in match))
            .values({n: given.c[n] for n in names if n not in match})
            .values(
                {
                    n: bindparam(f"same_{n}", v, type_=table.c[n].type)
                    for n, v in (same or {}).items()
                }
            )
        )
        if where is not None:
            statement = statement.where(where)
        if not returning:
            conn.execute(statement)
            return []
        return list(conn.execute(statement.returning(*returning)))

    def violated_constraint(self, exc: IntegrityError) -> str | None:
        diag = getattr(exc.orig, "diag", None)  # psycopg2's error details
        name = getattr(diag, "constraint_name", None)
        return str(name) if name is not None else None

    # --- claiming -----------------------------------------------------------------

    def claim_due(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def claim_due_among(
        self, query: Select[Any], column: ColumnElement[Any], values: list[str]
    ) -> Select[Any]:
        """One LATERAL probe per value, each its queue's head (`FOR UPDATE SKIP
        LOCKED`, an index range scan), then the oldest head. A head that is
        not taken stays locked until this transaction ends, a claim's few
        milliseconds: other claimers skip it, as they skip any claimed row."""
        names = func.unnest(cast(values, postgresql.ARRAY(String))).table_valued("name")
        names = names.render_derived(name="wanted")
        head = query.where(column == names.c.name).with_for_update(skip_locked=True).lateral("head")
        key, *order = head.c
        return select(key).select_from(names).join(head, true()).order_by(*order).limit(1)

    def in_list(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """`= ANY(array)`: one bound value, however many, and one statement text."""
        return column == any_(cast(list(values), postgresql.ARRAY(column.type)))

    def in_bound(self, column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
        """`= ANY($1::text[])` for a string column: the comparison's own type.
        An array of the column's type (VARCHAR(500)[]) would be cast to text[]
        on every row by a prepared statement's generic plan: 15 ms, not 0.7 ms,
        for a batch of 1,000 over 300 rows."""
        element = Text() if isinstance(column.type, String) else column.type
        return column == any_(cast(bindparam(name), postgresql.ARRAY(element)))

    # --- the global feed --------------------------------------------------------------

    def feed_visible(
        self, events: Table, after: str | None, *, in_flight_possible: bool = True
    ) -> ColumnElement[bool]:
        """Only transactions older than every one still in flight (tx_id <
        snapshot xmin), in (tx_id, position) order. With no appender possible
        in flight, the snapshot rule would only wait on unrelated transactions."""
        visible: ColumnElement[bool] = (
            events.c.tx_id < text(_XMIN) if in_flight_possible else events.c.tx_id.is_not(None)
        )
        if after is None:
            return visible
        tx, pos = self.parse_cursor(after)
        return and_(visible, tuple_(events.c.tx_id, events.c.position) > tuple_(tx, pos))

    def feed_hidden(self, events: Table) -> ColumnElement[bool] | None:
        """Rows of transactions not older than the oldest one in flight: a long
        transaction anywhere on the server holds them back."""
        return events.c.tx_id >= text(_XMIN)

    def feed_order(self, events: Table) -> list[Any]:
        return [events.c.tx_id, events.c.position]

    def feed_start_after_snapshot(
        self, conn: Connection, events: Table
    ) -> tuple[ColumnElement[bool], str]:
        """Every transaction older than the snapshot's xmin has ended, so
        `tx_id < xmin` is a prefix no late commit can join."""
        xmin = int(conn.execute(text(f"SELECT {_XMIN}")).scalar_one())
        return events.c.tx_id < xmin, self.make_cursor(xmin - 1, _MAX - 1)

    def feed_up_to(self, events: Table, cursor: str) -> ColumnElement[bool]:
        tx, pos = self.parse_cursor(cursor)
        return tuple_(events.c.tx_id, events.c.position) <= tuple_(tx, pos)

    def make_cursor(self, tx_id: int | None, position: int) -> str:
        return f"{tx_id}.{position}"

    def parse_cursor(self, cursor: str) -> tuple[int, int]:
        parts = cursor.split(".")
        if len(parts) != 2:
            raise ValueError("not a cursor of this feed")
        tx, pos = int(parts[0]), int(parts[1])
        if not (0 <= tx < _MAX and 0 <= pos < _MAX):
            raise ValueError("not a cursor of this feed")
        return tx, pos

    # --- rebuilds ---------------------------------------------------------------

    def bytewise(self, column: ColumnElement[str]) -> ColumnElement[str]:
        return column.collate("C")

    def lock_for_swap(self, conn: Connection, live: str, events: Table, timeout_s: float) -> None:
        """The live status table first, then the log: the lock order every
        command follows (README, "Design notes"). Readers of the status table
        wait (never fail) for the few milliseconds until commit.
        `lock_timeout` bounds the wait behind a long transaction, during which
        everyone queued behind this lock would wait too."""
        # LOCK and SET LOCAL have no Core constructs.
        conn.execute(text(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'"))
        try:
            conn.execute(text(f'LOCK TABLE "{live}" IN ACCESS EXCLUSIVE MODE'))
            conn.execute(text(f'LOCK TABLE "{events.name}" IN SHARE ROW EXCLUSIVE MODE'))
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) == "55P03":  # lock_not_available
                raise LockTimeout(str(exc.orig).strip()) from exc
            raise

    def swap_in(self, conn: Connection, shadow: Table, live_name: str) -> None:
        suffix = shadow.name.removeprefix(live_name)
        # DDL by name: no Core constructs for renames.
        conn.execute(text(f'DROP TABLE "{live_name}"'))
        conn.execute(text(f'ALTER TABLE "{shadow.name}" RENAME TO "{live_name}"'))
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

    def copy_out(
        self,
        conn: Connection,
        query: Select[Any],
        on_row: Callable[[list[str | None]], None],
        *,
        escaped: frozenset[int],
    ) -> None:
        copy.copy_out(conn, query, on_row, escaped=escaped)

    def copy_in(
        self, conn: Connection, table: Table, columns: list[str], rows: Iterable[list[Any] | str]
    ) -> None:
        copy.copy_in(conn, table, columns, rows)

    def start_listener(
        self, url: str, on_notify: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread | None:
        """A probe of the log's end, polled every 0.1 s (see `postgres/notify.py`)."""
        return notify.start_listener(url, on_notify, stop)

    # --- failures -----------------------------------------------------------------

    def is_unavailable(self, exc: DBAPIError) -> bool:
        """A lost connection (SQLAlchemy flags it), or a failed connect: psycopg2
        raises that as an OperationalError with no SQLSTATE (refused, reset,
        "shutting down", "starting up"), while errors a live server sends
        always carry one."""
        if exc.connection_invalidated:
            return True
        if not isinstance(exc, OperationalError):
            return False
        code: str | None = getattr(exc.orig, "pgcode", None)
        return code is None or code.startswith("08") or code in _UNAVAILABLE_SQLSTATES

    def is_lost_race(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "pgcode", None) in _LOST_RACE_SQLSTATES


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    backend: PostgresBackend, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> Statement:
    """Built once per shape: constructing it (its `excluded` alias above all)
    costs more than the round trip. `inline()`: nothing reads the generated
    key back, so no implicit RETURNING of it."""
    values: dict[str, Any] = {name: bindparam(name) for name in columns}
    return Statement(backend.upsert_statement(table, values, keys).inline(), prepare=True)
