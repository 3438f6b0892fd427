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

from sqlalchemy import Connection, Dialect, Insert, Select, Table, Update

from app.db.backend import backend_of


class Statement:
    """A Core SELECT, INSERT or UPDATE whose every parameter comes from the caller.

    `prepare=True` lets a backend prepare it on the server, once per
    connection: for statements whose outcome does not depend on their
    snapshot, such as inserts and upserts, or for reads that name in `lock`
    every table a rebuild may swap (see `app/db/postgres/fast.py`).
    """

    __slots__ = ("compiled", "lock", "prepare", "statement")

    def __init__(
        self,
        statement: Select[Any] | Insert | Update,
        *,
        prepare: bool = False,
        lock: tuple[Table, ...] = (),
    ) -> None:
        self.statement = statement
        self.prepare = prepare
        #: Tables locked (ACCESS SHARE) before a prepared read runs, in the
        #: same round trip: its snapshot is then taken after any swap of them.
        self.lock = lock
        #: Each backend's compiled form, by backend name, made on first use.
        self.compiled: dict[str, Any] = {}

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Execute with `params`; the rows it returns (none for plain DML)."""
        return backend_of(conn).run(self, conn, params)

    def sql(self, dialect: Dialect) -> str:
        """The SQL this statement sends on `dialect`, with the driver's placeholders."""
        return str(self.statement.compile(dialect=dialect))
