"""The storage backend contract: every backend passes these, on its own database.

They hold the promises code above storage relies on without asking which
database it runs on: conflicts leave as `ConcurrencyConflict`, the feed
never skips an event under concurrent writers, bulk copies round-trip,
named statements keep working across a rebuild's swap and a reconnect,
and a lost connection is `Unavailable`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, bindparam, select, text

from app.db.engine import Database, open_database
from app.db.statement import Statement
from app.db.tables import image_status, leases
from app.db.unit_of_work import unit_of_work
from app.errors import ConcurrencyConflict, Unavailable
from app.events import store
from app.events import types as ev
from app.events.types import NewEvent
from app.lifecycle import EventType, Status
from app.projections import projector, rebuild
from app.projections.status import StatusRow


def _requested(prompt: str | None = None) -> NewEvent:
    return NewEvent(
        EventType.REQUESTED,
        Status.NONE,
        Status.PENDING,
        ev.requested("scene", prompt, {}, False, "kenburns"),
        actor="contract",
    )


def _command(db: Database, img_name: str, prompt: str | None = None) -> StatusRow:
    """What a command does: lock the row, append one event, project it."""
    with unit_of_work(db) as uow:
        current = projector.load_current(uow.conn, img_name)
        return projector.append(uow, current, _requested(prompt))


@pytest.fixture
def single(db_url: str) -> Iterator[Database]:
    """One pooled connection per engine: every statement meets what the last one left."""
    db = open_database(db_url, pool_size=1)
    yield db
    db.dispose()


def test_two_writers_at_one_version_the_second_is_a_concurrency_conflict(
    database: Database,
) -> None:
    _command(database, "a.png")
    with pytest.raises(ConcurrencyConflict), unit_of_work(database) as uow:
        # Decided from version 0 although the stream is at 1: a lost race.
        store.append(uow.conn, "a.png", 0, [_requested()])
    with database.read() as conn:
        assert [e.version for e in store.read_stream(conn, "a.png")] == [1]


def test_the_fused_append_projects_in_the_same_statement_or_transaction(
    database: Database,
) -> None:
    row = _command(database, "a.png", prompt="zoom")
    with database.read() as conn:
        [event] = store.read_stream(conn, "a.png")
        stored = projector.load(conn, "a.png")
    assert stored == row
    assert (row.version, row.last_position, row.requested_at) == (
        1,
        event.position,
        event.recorded_at,
    )


def test_the_feed_skips_nothing_under_concurrent_writers(database: Database) -> None:
    writers, each = 6, 15
    done = threading.Event()
    seen: list[str] = []

    def write(w: int) -> None:
        for i in range(each):
            _command(database, f"w{w}-{i}.png")

    def read() -> None:
        after: str | None = None
        while True:
            finished = done.is_set()
            with database.read() as conn:
                page = store.read_all(conn, after=after, limit=7)
            seen.extend(e.img_name for e in page.events)
            after = page.cursor
            if finished and not page.events:
                return
            if not page.events:
                # A follower waits before it asks again, as the event stream
                # does. On SQLite a reader spinning without pause starves the
                # writers: their BEGIN IMMEDIATE waited out its 30 s busy timeout.
                time.sleep(0.002)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(30)
    assert sorted(seen) == sorted(f"w{w}-{i}.png" for w in range(writers) for i in range(each))


def test_bulk_copy_round_trips_awkward_text(database: Database) -> None:
    backend = database.backend
    if not backend.supports_copy:
        with pytest.raises(NotImplementedError), database.write() as conn:
            backend.copy_in(conn, leases, ["img_name"], [])
        return
    awkward = ["tab\there", "new\nline", "back\\slash", "crlf\r\n", "ünï €", "\\N"]
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    columns = ["img_name", "lease_token", "worker_id", "generation", "attempt"]
    columns += ["claimed_at", "expires_at", "lease_seconds", "heartbeat_at", "progress"]
    rows = [[name, f"t{i}", name, 1, 1, now, now, 60, None, 0.5] for i, name in enumerate(awkward)]
    with database.write() as conn:
        backend.copy_in(conn, leases, columns, rows)
    got: list[list[str | None]] = []
    query = select(leases.c.img_name, leases.c.worker_id, leases.c.heartbeat_at).order_by(
        leases.c.lease_token
    )
    with database.snapshot() as conn:
        backend.copy_out(conn, query, got.append, escaped=frozenset({0, 1, 2}))
    assert [(r[0], r[1], r[2]) for r in got] == [(name, name, None) for name in awkward]


def test_update_rows_sets_each_row_its_own_values_nulls_included(database: Database) -> None:
    backend = database.backend
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    base = {"worker_id": "w", "generation": 1, "attempt": 1, "claimed_at": now}
    rows = [
        {
            **base,
            "img_name": f"{i}.png",
            "lease_token": f"t{i}",
            "expires_at": now,
            "lease_seconds": 60,
        }
        for i in range(3)
    ]
    with database.write() as conn:
        conn.execute(leases.insert(), rows)
        updated = backend.update_rows(
            conn,
            leases,
            ["img_name", "lease_token"],
            [
                {"img_name": "0.png", "lease_token": "t0", "progress": 0.5, "heartbeat_at": None},
                {"img_name": "1.png", "lease_token": "t1", "progress": None, "heartbeat_at": now},
                {"img_name": "2.png", "lease_token": "wrong", "progress": 0.9, "heartbeat_at": now},
            ],
            where=leases.c.lease_seconds == 60,
            same={"worker_id": "w2"},
            returning=[leases.c.img_name],
        )
    with database.read() as conn:
        got = conn.execute(
            select(
                leases.c.img_name, leases.c.progress, leases.c.heartbeat_at, leases.c.worker_id
            ).order_by(leases.c.img_name)
        ).all()
    # Each row its own values, and `same` for all; a row its match does not
    # find is left alone, and not returned.
    assert [tuple(r) for r in got] == [
        ("0.png", 0.5, None, "w2"),
        ("1.png", None, now, "w2"),
        ("2.png", None, None, "w"),
    ]
    assert sorted(row.img_name for row in updated) == ["0.png", "1.png"]


def test_named_statements_work_after_a_rebuild_swapped_the_table(
    single: Database, database: Database
) -> None:
    _command(single, "before.png", prompt="one")  # prepares the append on its connection
    rebuild.rebuild(database)  # elsewhere: drops the live table, renames the shadow in
    row = _command(single, "after.png", prompt="two")  # the same connection, the new table
    with single.read() as conn:
        assert projector.load(conn, "after.png") == row
        names = conn.execute(select(image_status.c.img_name).order_by(image_status.c.img_name))
        assert [n for (n,) in names] == ["after.png", "before.png"]


def _cut(db: Database, conn: Connection) -> None:
    """End the database connection under `conn`, as a failover or a restart would."""
    if db.backend.name == "postgresql":
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = open_database(db.writer.url.render_as_string(hide_password=False), pool_size=1)
        with admin.read() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
    else:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.close()


_READ_ONE = Statement(
    select(image_status.c.img_name).where(image_status.c.img_name == bindparam("img_name"))
)


def test_a_lost_connection_is_unavailable_then_the_next_one_works(single: Database) -> None:
    _command(single, "a.png")  # the append's statements prepared on the writer's connection
    with pytest.raises(Unavailable), single.read() as conn:
        _cut(single, conn)
        _READ_ONE.run(conn, {"img_name": "a.png"})
    with pytest.raises(Unavailable), unit_of_work(single) as uow:
        _cut(single, uow.conn)
        projector.load_current(uow.conn, "b.png")
    # The pool opened fresh connections: statements are prepared again on them.
    _command(single, "c.png")
    with single.read() as conn:
        assert _READ_ONE.run(conn, {"img_name": "a.png"}) == [("a.png",)]
        assert projector.load(conn, "c.png") is not None


def test_the_cursor_of_a_backend_is_refused_by_a_feed_that_did_not_make_it(
    database: Database,
) -> None:
    backend = database.backend
    made = backend.make_cursor(None if backend.transaction_id() is None else 7, 42)
    assert backend.parse_cursor(made)[1] == 42
    for bad in ("", "x", "1.2.3", "-1", "9" * 30):
        with pytest.raises(ValueError):
            backend.parse_cursor(bad)
