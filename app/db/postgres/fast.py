"""The PostgreSQL fast path: named statements run on the driver's cursor,
prepared on the server where asked.

Why: `Connection.execute` spends several times the driver's own time in
Python per statement (execution context, result metadata, events), and
under the GIL that Python is what caps concurrent writers; and without a
prepared statement PostgreSQL parses and plans each one anew (figures in
`bench/RESULTS.md`).

The promise kept, and held by `tests/contract/`: the SQL is compiled from
Core by the connection's dialect; parameters and results pass through the
columns' type processors; a driver error leaves as SQLAlchemy's
`DBAPIError` subclass (`IntegrityError`, …), the connection invalidated
first if it was a disconnect. Skipped: execution events (`echo` does not
show these statements) and SQLAlchemy's compiled cache, which
`Statement.compiled` replaces.

Prepared statements: PREPAREd on each connection the first time they run
there. PostgreSQL keeps them for the session, through rollbacks, and plans
them again by name after DDL such as a rebuild's table swap. Each
connection records what it has prepared in its pool `info`, which a
reconnect clears. An EXECUTE takes its snapshot before it waits for its
table locks, so a prepared read that waited behind a swap would not see the
rows of the table swapped in. Inserts and upserts do not care (their
conflict checks see the latest committed rows). A read is prepared only
with the tables a swap may replace named in `Statement.lock`: they are
locked first, in the same round trip (`LOCK TABLE …; EXECUTE …`), and the
EXECUTE's snapshot is then taken after any wait. Preparing saves the parse
and plan of every command's lock read and every status read, the most of
the server's time they take. A pooler that shares server sessions between
clients per transaction (PgBouncer's transaction mode) needs its
prepared-statement support turned on.

Only inside a transaction (the writer's) or on an autocommit connection
(the reader's); anywhere else a statement runs through `Connection.execute`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from app.db.statement import Statement

#: The key, in a pooled connection's `info`, of the statements it has prepared.
PREPARED = "vidledger.prepared"

#: A psycopg2 placeholder `%(name)s`, or an escaped percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@dataclass
class Compiled:
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


def run(statement: Statement, conn: Connection, params: Mapping[str, Any]) -> Sequence[Any]:
    """Execute `statement` with `params`; the rows it returns (none for plain DML)."""
    if not (conn.in_transaction() or _autocommit(conn)):
        result = conn.execute(statement.statement, params)
        return result.all() if result.returns_rows else []
    compiled: Compiled = statement.compiled.get("postgresql") or compile_statement(
        statement, conn.dialect
    )
    bound = dict(params)
    for name, process in compiled.bind_processors:
        bound[name] = process(bound[name])
    pooled = conn.connection
    assert pooled.dbapi_connection is not None, "a connection in a transaction is checked out"
    prepared: set[str] = pooled.info.setdefault(PREPARED, set())
    cursor = pooled.dbapi_connection.cursor()
    try:
        if compiled.prepare is not None and compiled.name not in prepared:
            cursor.execute(compiled.prepare)
            prepared.add(compiled.name)
        cursor.execute(compiled.execute, bound)
        if cursor.description is None:
            return []
        rows = cursor.fetchall()
        processors = compiled.result_processors or _result_processors(
            statement, compiled, conn, cursor
        )
    except conn.dialect.loaded_dbapi.Error as err:
        raise _wrapped(conn, compiled.sql, bound, err, cursor) from err
    finally:
        cursor.close()
    active = [(i, p) for i, p in enumerate(processors) if p is not None]
    if not rows or not active:
        return rows
    # Only the columns that have a processor (a batch of 1,000 statuses has
    # 23 columns a row, 5 of them timestamps).
    processed = []
    for row in rows:
        values = list(row)
        for i, process in active:
            values[i] = process(values[i])
        processed.append(values)
    return processed


def compile_statement(statement: Statement, dialect: Dialect) -> Compiled:
    """Compile `statement` for the driver once, and keep it on the statement."""
    compiled = statement.statement.compile(dialect=dialect)
    if not all(param.required for param in compiled.binds.values()):
        # `run` binds only what the caller gives, not values kept in the statement.
        raise ValueError("a Statement takes every parameter from its caller")
    procs = []
    for name, param in compiled.binds.items():
        process = param.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            procs.append((name, process))
    sql = compiled.string
    names = list(compiled.binds)
    server_name = f"vidledger_{hashlib.sha1(sql.encode()).hexdigest()[:20]}"
    arguments = ", ".join(f"%({n})s" for n in names)
    if statement.prepare:
        prepare: str | None = f"PREPARE {server_name} AS {_numbered(sql, names)}"
        execute = f"EXECUTE {server_name} ({arguments})" if names else f"EXECUTE {server_name}"
        if statement.lock:
            tables = ", ".join(dialect.identifier_preparer.format_table(t) for t in statement.lock)
            # The same implicit or open transaction: the lock is held until it ends.
            execute = f"LOCK TABLE {tables} IN ACCESS SHARE MODE; {execute}"
    else:
        prepare, execute = None, sql
    made = Compiled(
        sql=sql,
        name=server_name,
        prepare=prepare,
        execute=execute,
        bind_processors=tuple(procs),
    )
    statement.compiled["postgresql"] = made
    return made


def _result_processors(
    statement: Statement, compiled: Compiled, conn: Connection, cursor: Any
) -> list[Any]:
    """Each result column's processor, as Core picks it: by the column's type
    and the driver's type code of the value (known after a first execution)."""
    columns = list(statement.statement.exported_columns)  # a SELECT's, or the RETURNING
    processors = [
        column.type.dialect_impl(conn.dialect).result_processor(conn.dialect, described[1])
        for column, described in zip(columns, cursor.description, strict=True)
    ]
    compiled.result_processors = processors
    return processors


def _autocommit(conn: Connection) -> bool:
    """Whether psycopg2 runs each statement on its own (the reader engine)."""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


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
