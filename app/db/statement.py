"""Named hot statements: a Core statement built once, run by the connection's backend.

Hot SQL lives in module-level `Statement`s, so that each can be read and
EXPLAINed on its own (`sql`). How it runs is the backend's business: the
PostgreSQL backend runs it on the driver's cursor, prepared on the server
where asked (`app/db/postgres/fast.py`); SQLite's runs it through
`Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Select

from app.db.backend import backend_of


class Statement:
    """A Core SELECT or INSERT whose every parameter comes from the caller.

    `prepare=True` lets a backend prepare it on the server, once per
    connection: only for statements whose outcome does not depend on their
    snapshot, such as inserts and upserts (see `app/db/postgres/fast.py`).
    A read is never prepared.
    """

    __slots__ = ("compiled", "prepare", "statement")

    def __init__(self, statement: Select[Any] | Insert, *, prepare: bool = False) -> None:
        self.statement = statement
        self.prepare = prepare
        #: Each backend's compiled form, by backend name, made on first use.
        self.compiled: dict[str, Any] = {}

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Execute with `params`; the rows it returns (none for plain DML)."""
        return backend_of(conn).run(self, conn, params)

    def sql(self, dialect: Dialect) -> str:
        """The SQL this statement sends on `dialect`, with the driver's placeholders."""
        return str(self.statement.compile(dialect=dialect))
