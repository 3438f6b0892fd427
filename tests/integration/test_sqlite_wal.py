"""Connections of several pools open at once on a new SQLite database.

`vidledger db upgrade` leaves the database in rollback-journal mode, and
each new connection puts it in WAL mode. A server has several pools (the
writer's, the reader's, a worker's), and their first connections open at
about the same moment. Two that switched at once deadlocked on the switch,
and SQLite answered "database is locked" at once, whatever the busy
timeout: a worker thread died with that in `make bench`.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import event

from app.db.engine import Database, open_database

POOLS = 4
TRIALS = 25


def _rollback_mode_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def _open_together(path: Path) -> list[str]:
    """Open the first connection of `POOLS` pools at once; the errors they met."""
    failures: list[str] = []
    pools = [open_database(f"sqlite:///{path}", pool_size=1) for _ in range(POOLS)]
    together = threading.Barrier(POOLS)

    def line_up(_dbapi_conn: object, _record: object) -> None:
        together.wait(timeout=10)

    def read(db: Database) -> None:
        try:
            with db.read() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM t").all()
        except Exception as exc:
            failures.append(f"{exc.__class__.__name__}: {exc}")

    for db in pools:
        # First of the connect hooks: every pool's first connection reaches
        # the switch at the same moment.
        event.listen(db.reader, "connect", line_up, insert=True)
    threads = [threading.Thread(target=read, args=(db,)) for db in pools]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for db in pools:
        db.dispose()
    return failures


def test_first_connections_of_several_pools_all_open_on_a_wal_database(tmp_path: Path) -> None:
    failures: list[str] = []
    modes: list[str] = []
    for trial in range(TRIALS):
        path = tmp_path / f"trial{trial}.db"
        _rollback_mode_database(path)
        failures += _open_together(path)
        check = sqlite3.connect(path)
        try:
            modes.append(check.execute("PRAGMA journal_mode").fetchone()[0])
        finally:
            check.close()
    assert failures == []
    assert set(modes) == {"wal"}
