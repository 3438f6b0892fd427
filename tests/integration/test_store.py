"""The event store and inline projector, on both databases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from app.db.engine import Database
from app.db.tables import events, image_status
from app.errors import ConcurrencyConflict
from app.events import store
from app.events import types as ev
from app.events.types import NewEvent
from app.lifecycle import EventType, Status
from app.projections import projector
from app.service import Actor, VideoService


def _requested() -> NewEvent:
    return NewEvent(
        EventType.REQUESTED,
        Status.NONE,
        Status.PENDING,
        ev.requested("scene", None, {}, False, "kenburns"),
        actor="test",
    )


def test_append_assigns_versions_positions_and_database_time(database: Database) -> None:
    with database.write() as conn:
        recorded = store.append(conn, "a.png", 0, [_requested()])
        projector.project(conn, None, recorded)
    [event] = recorded
    assert event.version == 1 and event.position >= 1
    assert event.recorded_at.tzinfo is not None
    if database.backend.name == "postgresql":
        assert event.tx_id is not None
    with database.read() as conn:
        [read] = store.read_stream(conn, "a.png")
    assert (read.event_id, read.version, read.data) == (event.event_id, 1, event.data)


def test_an_append_at_a_stale_version_is_a_conflict_and_writes_nothing(
    database: Database,
) -> None:
    with database.write() as conn:
        store.append(conn, "a.png", 0, [_requested()])
    with pytest.raises(ConcurrencyConflict), database.write() as conn:
        store.append(conn, "a.png", 0, [_requested()])
    with database.read() as conn:
        assert len(store.read_stream(conn, "a.png")) == 1


def test_concurrent_appends_at_one_version_let_exactly_one_win(database: Database) -> None:
    """Two writers that both decided from version n cannot both write n + 1."""
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def writer() -> None:
        barrier.wait()
        try:
            with database.write() as conn:
                store.append(conn, "race.png", 0, [_requested()])
            outcomes.append("won")
        except ConcurrencyConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]


def test_a_failed_projection_rolls_the_append_back(database: Database) -> None:
    with pytest.raises(DBAPIError), database.write() as conn:
        recorded = store.append(conn, "a.png", 0, [_requested()])
        conn.execute(text("SELECT * FROM no_such_table"))  # the projection step fails
        projector.project(conn, None, recorded)
    with database.read() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 0


def test_read_all_pages_through_the_log_in_order(service: VideoService, database: Database) -> None:
    for i in range(7):
        service.request_video(f"img{i}.png", "scene", Actor("t"))
    seen = []
    after = None
    with database.read() as conn:
        while True:
            page = store.read_all(conn, after=after, limit=3)
            seen += [e.img_name for e in page.events]
            if not page.events:
                break
            after = page.cursor
    assert seen == [f"img{i}.png" for i in range(7)]


def test_a_tailing_reader_sees_every_event_exactly_once_under_8_writers(
    service: VideoService, database: Database
) -> None:
    """8 writers commit out of order; the feed never skips or repeats one."""
    per_writer = 25
    done = threading.Event()

    def write(w: int) -> None:
        for i in range(per_writer):
            service.request_video(f"w{w}-{i}.png", "scene", Actor(f"w{w}"))

    seen: list[int] = []

    def tail() -> None:
        after = None
        while True:
            finished = done.is_set()
            with database.read() as conn:
                page = store.read_all(conn, after=after, limit=50)
            seen.extend(e.position for e in page.events)
            after = page.cursor
            if finished and not page.events:
                return
            if not page.events:
                time.sleep(0.005)

    reader = threading.Thread(target=tail)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    with database.read() as conn:
        committed = {p for (p,) in conn.execute(select(events.c.position))}
    assert len(seen) == len(set(seen)) == 8 * per_writer  # exactly once
    assert set(seen) == committed  # nothing skipped
    # Feed order is stable: reading again from the start gives the same sequence.
    with database.read() as conn:
        again = [e.position for e in store.iter_all(conn, batch=37)]
    assert again == seen


def test_a_foreign_cursor_is_refused(database: Database) -> None:
    with database.read() as conn, pytest.raises(ValueError):
        store.read_all(conn, after="not-a-cursor", limit=10)


def test_the_log_refuses_update_and_delete_on_postgresql(
    service: VideoService, database: Database
) -> None:
    if database.backend.name != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    service.request_video("a.png", "scene", Actor("t"))
    with pytest.raises(DBAPIError, match="append-only"), database.write() as conn:
        conn.execute(update(events).values(actor="mallory"))
    with pytest.raises(DBAPIError, match="append-only"), database.write() as conn:
        conn.execute(text("DELETE FROM video_status_events"))
    with database.read() as conn:
        assert conn.execute(select(events.c.actor)).scalar() == "t"


def test_projection_row_is_written_in_the_same_transaction(
    service: VideoService, database: Database
) -> None:
    service.request_video("a.png", "scene", Actor("t"))
    with database.read() as conn:
        row = conn.execute(
            select(
                image_status.c.version, image_status.c.last_position, image_status.c.video_status
            )
        ).one()
        last = conn.execute(select(func.max(events.c.position))).scalar()
    assert (row.version, row.last_position, row.video_status) == (1, last, "pending")
