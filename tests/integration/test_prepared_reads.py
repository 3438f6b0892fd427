"""Prepared reads on PostgreSQL see a rebuild's swapped-in table.

An EXECUTE takes its snapshot before it waits for its table locks. A
rebuild's swap writes the last events into the new table in its own
transaction, so a prepared read that queued behind the swap would not see
those rows: a command would find no row, and refuse; a status read would
answer `none`. The reads that a rebuild can swap under (a command's lock
read, the status reads) lock the status table first, in the same round
trip. These tests append an event just before a real rebuild's swap, and
hold the swap until a read waits on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from app.db.engine import Database, open_database
from app.db.postgres.backend import PostgresBackend
from app.lifecycle import Status
from app.projections import rebuild
from app.service import Actor, VideoService
from app.service.queries import VideoQueries

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]


def _waiting_on_a_lock(pg_url: str) -> int:
    conn = psycopg2.connect(pg_url.replace("postgresql+psycopg2", "postgresql"))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            (waiting,) = cur.fetchone()  # type: ignore[misc]
    finally:
        conn.close()
    return int(waiting)


def _behind_a_swap(
    db_url: str,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    before: Callable[[], Any],
    read: Callable[[], Any],
) -> Any:
    """Rebuild the projection; run `before` just before the swap (its event
    then reaches the new table in the swap's transaction), and `read` once
    the swap holds its lock. The swap commits only when `read` waits on it.
    Returns what `read` gave."""
    real_lock, real_swap = PostgresBackend.lock_for_swap, PostgresBackend.swap_in
    outcome: list[Any] = []
    readers: list[threading.Thread] = []

    def append_then_lock(self: PostgresBackend, *args: Any) -> None:
        before()
        real_lock(self, *args)

    def swap_then_wait(self: PostgresBackend, *args: Any) -> None:
        real_swap(self, *args)
        reader = threading.Thread(target=lambda: outcome.append(_caught(read)))
        reader.start()
        readers.append(reader)
        deadline = time.monotonic() + 10
        while _waiting_on_a_lock(db_url) == 0:
            assert time.monotonic() < deadline, "the read never waited on the swap"
            time.sleep(0.01)
        assert not outcome, "the read did not wait for the swap"

    monkeypatch.setattr(PostgresBackend, "lock_for_swap", append_then_lock)
    monkeypatch.setattr(PostgresBackend, "swap_in", swap_then_wait)
    rebuild.rebuild(database)
    readers[0].join(10)
    return outcome[0]


def _caught(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # the test reads it
        return exc


def test_a_command_waiting_behind_a_swap_decides_on_the_new_table(
    db_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = open_database(db_url, pool_size=1)  # one connection: its statements prepared
    try:
        svc = VideoService(own)
        svc.request_video("warm.png", "scene", Actor("t"))
        svc.cancel_video("warm.png", Actor("t"))  # the lock read and the append prepared
        got = _behind_a_swap(
            db_url,
            database,
            monkeypatch,
            lambda: VideoService(database).request_video("swapped.png", "scene", Actor("t")),
            lambda: svc.cancel_video("swapped.png", Actor("t")),
        )
    finally:
        own.dispose()
    assert not isinstance(got, Exception), got
    assert got.row.video_status is Status.CANCELLED


def test_a_status_read_waiting_behind_a_swap_sees_the_new_table(
    db_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = open_database(db_url, pool_size=1)
    try:
        reads = VideoQueries(own)
        assert reads.status("warm.png").row.version == 0  # prepared on the reader's connection
        got = _behind_a_swap(
            db_url,
            database,
            monkeypatch,
            lambda: VideoService(database).request_video("seen.png", "scene", Actor("t")),
            lambda: reads.status("seen.png"),
        )
    finally:
        own.dispose()
    assert not isinstance(got, Exception), got
    assert got.row.video_status is Status.PENDING and got.row.version == 1


def test_a_reader_goes_back_to_its_pool_holding_no_lock_and_no_transaction(
    db_url: str,
) -> None:
    # A reader's connection is not rolled back when it goes back to the pool
    # (no thread switch per read): autocommit must have ended everything.
    # A status read's ACCESS SHARE lock left held would stall every rebuild.
    own = open_database(db_url, pool_size=1)
    try:
        reads = VideoQueries(own)
        reads.status("a.png")
        reads.status("a.png")  # prepared by now: LOCK TABLE …; EXECUTE …
        with own.read() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        admin = psycopg2.connect(db_url.replace("postgresql+psycopg2", "postgresql"))
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
                (state,) = cur.fetchone()  # type: ignore[misc]
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'relation'",
                    (pid,),
                )
                (locks,) = cur.fetchone()  # type: ignore[misc]
        finally:
            admin.close()
    finally:
        own.dispose()
    assert state == "idle"
    assert locks == 0
