"""Writes with an Idempotency-Key: twins racing on one image get one answer,
and on PostgreSQL a command takes two statements.

The kept answer is read with the locked row, in the same statement. A twin
that waited behind the first one's row lock read the key before that commit,
so it must find the first answer some other way: by a refusal that looks
again, or by the guarded write of its own answer. These tests race the twins
for real, through the HTTP app, on both databases.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx
import psycopg2
import psycopg2.extensions
import pytest

from app.api import create_app
from app.config import Settings
from app.db.engine import Database, open_database
from app.errors import VideoInProgress
from app.events import store
from app.lifecycle import EventType
from app.service import Actor, Idempotency, Replayed, VideoService, VideoState

TWINS = 24


def _twins(app: object, method: str, path: str, body: Any, key: str) -> list[httpx.Response]:
    """TWINS requests at once, with one key, through the app in process. In
    a thread of their own: an earlier test (the browser's) may leave an
    event loop running in this one."""

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Idempotency-Key": key}
            return await asyncio.gather(
                *(client.request(method, path, json=body, headers=headers) for _ in range(TWINS))
            )

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, send()).result(timeout=120)


def _one_answer(responses: list[httpx.Response], status: int) -> dict[str, Any]:
    """Every twin got the same status and body; all but one as a replay."""
    assert {r.status_code for r in responses} == {status}, [r.text for r in responses]
    first = responses[0].json()
    assert all(r.json() == first for r in responses), "the twins' bodies differ"
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == TWINS - 1
    return first  # type: ignore[no-any-return]


def _types(database: Database, img_name: str) -> list[EventType]:
    with database.read() as conn:
        return [e.event_type for e in store.read_stream(conn, img_name)]


def test_twin_requests_for_a_new_image_get_one_answer_and_one_event(
    settings: Settings, database: Database
) -> None:
    app = create_app(settings, db=database)
    body = {"img_name": "twin.png", "source_type": "scene"}
    responses = _twins(app, "POST", "/v1/videos", body, "twin-1")
    assert _one_answer(responses, 202)["video_status"] == "pending"
    assert _types(database, "twin.png") == [EventType.REQUESTED]


def test_twin_cancels_behind_one_row_lock_get_one_answer(
    settings: Settings, database: Database
) -> None:
    """The first twin cancels; the others, queued on the row lock, would be
    refused (cancelled is final) but answer with the first one's reply."""
    VideoService(database).request_video("pend.png", "scene", Actor("t"))
    app = create_app(settings, db=database)
    responses = _twins(app, "POST", "/v1/videos/pend.png/cancel", {}, "cancel-1")
    assert _one_answer(responses, 200)["video_status"] == "cancelled"
    assert _types(database, "pend.png") == [EventType.REQUESTED, EventType.CANCELLED]


def test_twin_cancels_of_a_processing_video_get_one_answer(
    settings: Settings, database: Database
) -> None:
    """The first twin flags the cancel; for the others, queued on the row
    lock, a second cancel changes nothing, so only the guarded write of
    their answer can tell that the first one's answer is the reply."""
    svc = VideoService(database)
    svc.request_video("busy.png", "scene", Actor("t"))
    assert svc.claim_task("w1") is not None
    app = create_app(settings, db=database)
    responses = _twins(app, "POST", "/v1/videos/busy.png/cancel", {}, "cancel-2")
    answer = _one_answer(responses, 200)
    assert answer["video_status"] == "processing" and answer["cancel_requested"] is True
    assert _types(database, "busy.png") == [
        EventType.REQUESTED,
        EventType.PROCESSING_STARTED,
        EventType.CANCEL_REQUESTED,
    ]


def _behind_a_held_lock(pg_url: str, img_name: str, twins: list[Any]) -> list[Any]:
    """Run `twins` (calls) at once while another transaction holds the row
    lock of `img_name`, until every twin waits on it with its snapshot taken;
    then let go. The twin served second read the key before the first one
    committed. Returns each twin's outcome, or the exception it raised."""
    blocker = psycopg2.connect(pg_url.replace("postgresql+psycopg2", "postgresql"))
    outcomes: list[Any] = [None] * len(twins)
    try:
        with blocker.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM image_video_status WHERE img_name = %s FOR UPDATE", (img_name,)
            )

            def run(i: int) -> None:
                try:
                    outcomes[i] = twins[i]()
                except Exception as exc:  # the test reads it
                    outcomes[i] = exc

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(twins))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # The statistics views keep one snapshot per transaction unless cleared.
                cur.execute("SELECT pg_stat_clear_snapshot()")
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                (waiting,) = cur.fetchone()  # type: ignore[misc]
                if waiting == len(twins):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the twins never queued on the row lock")
        blocker.commit()
        for t in threads:
            t.join(10)
    finally:
        blocker.close()
    return outcomes


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("processing", [False, True], ids=["pending", "processing"])
def test_a_twin_that_read_before_the_first_committed_replays_its_answer(
    db_url: str, database: Database, processing: bool
) -> None:
    """Pending: the late twin would be refused (cancelled is final) and looks
    again. Processing: a second cancel changes nothing, so the guarded write
    of its answer is what finds the first one's."""
    svc, actor = VideoService(database), Actor("t")
    svc.request_video("held.png", "scene", actor)
    if processing:
        assert svc.claim_task("w1") is not None
    twin = lambda: svc.cancel_video("held.png", actor, idem=_idem("k"))  # noqa: E731
    outcomes = _behind_a_held_lock(db_url, "held.png", [twin, twin])
    assert sorted(type(o).__name__ for o in outcomes) == ["Replayed", "VideoState"], outcomes
    first = next(o for o in outcomes if isinstance(o, VideoState))
    replayed = next(o for o in outcomes if isinstance(o, Replayed))
    assert replayed.body == _idem("k").answer(first)[1]
    cancelled = EventType.CANCEL_REQUESTED if processing else EventType.CANCELLED
    assert _types(database, "held.png")[-1] == cancelled
    assert _types(database, "held.png").count(cancelled) == 1


class _Counting(psycopg2.extensions.cursor):
    """Counts what is sent, one entry per round trip, named by the SQL
    commands in it (psycopg2's own BEGIN and COMMIT are not counted)."""

    sent: ClassVar[list[str]] = []

    def execute(self, query: Any, vars: Any = None) -> None:
        commands = [part.split(None, 1)[0] for part in str(query).split(";") if part.strip()]
        _Counting.sent.append("; ".join(commands))
        super().execute(query, vars)


@pytest.fixture
def counted(pg_session_url: str, db_url: str) -> Iterator[VideoService]:
    """A service on one PostgreSQL connection a pool whose statements are
    counted: the writer's, and the autocommit one a first request uses."""
    db = open_database(pg_session_url, pool_size=1)
    for engine in (db.writer, db.reader):
        with engine.connect() as conn:
            conn.connection.dbapi_connection.cursor_factory = _Counting  # type: ignore[union-attr]
    yield VideoService(db)
    db.dispose()


def _idem(key: str) -> Idempotency:
    def answer(state: VideoState) -> tuple[int, Any]:
        return 202, {"status": state.row.video_status.value, "version": state.row.version}

    return Idempotency(key=key, fingerprint="f" * 64, answer=answer)


def _statements(call: Any) -> list[str]:
    _Counting.sent.clear()
    call()
    return list(_Counting.sent)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_command_takes_two_statements_on_postgresql(counted: VideoService) -> None:
    """Read the locked row (with the kept answer), then one statement that
    appends, projects, checks the version and keeps the answer. Both are
    prepared; the read locks the status table first, in the same round trip.
    A request for a new image is one statement alone, in autocommit (no
    BEGIN, no COMMIT): the event, its row and the kept answer."""
    svc, actor = counted, Actor("t")
    svc.request_video("warm.png", "scene", actor, idem=_idem("warm"))  # PREPAREd once
    svc.request_video("warm2.png", "scene", actor)
    svc.cancel_video("warm.png", actor, idem=_idem("warm-cancel"))
    svc.cancel_video("warm2.png", actor)

    first, read, write = "LOCK; EXECUTE", "LOCK; EXECUTE", "EXECUTE"
    assert _statements(lambda: svc.request_video("a.png", "scene", actor)) == [first]
    keyed = _statements(lambda: svc.request_video("b.png", "scene", actor, idem=_idem("k")))
    assert keyed == [first]
    replay: list[Any] = []
    assert _statements(
        lambda: replay.append(svc.request_video("b.png", "scene", actor, idem=_idem("k")))
    ) == [first, read]
    assert replay == [Replayed(status=202, body={"status": "pending", "version": 1})]
    with pytest.raises(VideoInProgress):
        _statements(lambda: svc.request_video("a.png", "scene", actor))
    assert _Counting.sent == [first, read]
    cancel = _statements(lambda: svc.cancel_video("b.png", actor, idem=_idem("c")))
    assert cancel == [read, write]
    regenerate = _statements(lambda: svc.request_video("c.png", "scene", actor, regenerate=True))
    assert regenerate == [read, write]  # a regenerate takes the checked way
