"""GET /v1/events/stream against a real server, on both databases.

The stream is read as a client would: raw SSE lines over HTTP, parsed here.
On PostgreSQL the feed shows an event only once every older transaction
has ended, so nothing here asserts on timing: waits are bounded loops.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.routes import stream
from app.config import Settings
from app.db.engine import Database
from app.events.store import FeedFilter
from app.feed import FeedSignal
from app.keys import Role, create_key
from app.service import Actor, Page, VideoService, utcnow
from app.service.queries import VideoQueries

STREAM = "/v1/events/stream"
#: Bounds every wait; generous, since a loaded CI machine may be slow.
DEADLINE_SECONDS = 60.0


# --- a real server, and an SSE reader -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    app: FastAPI


@pytest.fixture
def server(settings: Settings, database: Database) -> Iterator[Server]:
    port = _free_port()
    app = create_app(settings, db=database)
    # Frequent keep-alives, so that a blocked read returns well within the
    # tests' deadlines even when no event comes.
    app.state.feed_ping_seconds = 0.5
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield Server(f"http://127.0.0.1:{port}", app)
    srv.should_exit = True
    thread.join(10)
    assert not thread.is_alive(), "server did not stop (a stream left open?)"


@dataclass(frozen=True)
class Message:
    """One SSE block: an event (id, event, data) or a comment."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def body(self) -> dict[str, Any]:
        assert self.data is not None
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


def sse(response: httpx.Response) -> Iterator[Message]:
    """Parse an event stream (the WHATWG rules this API uses: one data line)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                yield Message(**fields)
            fields = {}
        elif line.startswith(":"):
            yield Message(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            assert name in ("id", "event", "data"), line
            fields[name] = value.removeprefix(" ")


def read_events(response: httpx.Response, count: int, deadline: float) -> list[Message]:
    """The next `count` events of an open stream, skipping keep-alive comments."""
    got: list[Message] = []
    if count == 0:
        return got
    for message in sse(response):
        assert time.monotonic() < deadline, f"only {len(got)} of {count} events arrived"
        if message.comment is None:
            got.append(message)
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {len(got)} of {count} events")


def read_until(
    response: httpx.Response, done: Any, deadline: float, *, max_events: int = 1000
) -> list[Message]:
    """Events until one satisfies `done` (included)."""
    got: list[Message] = []
    for message in sse(response):
        assert time.monotonic() < deadline, f"no final event after {len(got)} events"
        if message.comment is None:
            got.append(message)
            if done(message) or len(got) >= max_events:
                return got
    raise AssertionError(f"the stream ended after {len(got)} events")


def whole_feed(http: httpx.Client, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {**params, "limit": "1000", **({"after": after} if after else {})}
        r = http.get("/v1/events", params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if not page["items"]:
            return items
        after = page["next_cursor"]


def feed_of_length(http: httpx.Client, n: int, **params: str) -> list[dict[str, Any]]:
    """The whole feed once it shows `n` events (late commits show up late on PostgreSQL)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(items := whole_feed(http, **params)) < n:
        assert time.monotonic() < deadline, f"the feed shows {len(items)} of {n} events"
        time.sleep(0.05)
    assert len(items) == n
    return items


def request_and_cancel(url: str, names: list[str], errors: list[BaseException]) -> None:
    """Two transitions per image, each its own HTTP write through the server."""
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for name in names:
                r = http.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
                assert r.status_code == 202, r.text
                r = http.post(f"/v1/videos/{name}/cancel", json={})
                assert r.status_code == 200, r.text
    except BaseException as exc:  # reported by the test thread, which can fail
        errors.append(exc)


def wait_for_no_subscribers(server: Server) -> None:
    # A disconnect reaches the server a moment after the client closes.
    deadline = time.monotonic() + DEADLINE_SECONDS
    while server.app.state.feed_signal.subscriber_count:
        assert time.monotonic() < deadline, "a disconnected stream is still subscribed"
        time.sleep(0.02)


# --- the acceptance test --------------------------------------------------------------


def test_a_client_that_resumes_with_last_event_id_gets_200_concurrent_events_once_in_order(
    server: Server,
) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    names = [f"img{i:03}.png" for i in range(100)]
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=request_and_cancel, args=(server.url, names[k::8], errors))
        for k in range(8)
    ]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("GET", STREAM) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for w in writers:
                w.start()
            first = read_events(r, 100, deadline)
        resume_from = first[-1].id
        assert resume_from is not None
        with http.stream("GET", STREAM, headers={"Last-Event-ID": resume_from}) as r:
            assert r.status_code == 200
            rest = read_events(r, 100, deadline)
        for w in writers:
            w.join(DEADLINE_SECONDS)
        assert not errors, errors
        feed = feed_of_length(http, 200)

    received = first + rest
    ids = [m.id for m in received]
    assert len(set(ids)) == 200, "an event arrived twice"
    assert ids == [item["cursor"] for item in feed], "not the feed's events in the feed's order"
    assert [m.body() for m in received] == feed, "data is not the /v1/events item"
    assert [m.event for m in received] == [item["event_type"] for item in feed]
    assert {item["event_type"] for item in feed} == {"VideoRequested", "VideoCancelled"}
    wait_for_no_subscribers(server)


# --- wake-ups and the idle poll ---------------------------------------------------------


def first_event_while_writing(server: Server, write: Any, deadline: float) -> Message:
    """Write until the stream shows an event, and return that event.

    More than one write may be needed on PostgreSQL, where an event can be
    hidden at the moment of its wake-up by an older transaction still open.
    """
    writes = 0
    with httpx.Client(base_url=server.url, timeout=30) as http, http.stream("GET", STREAM) as r:
        assert r.status_code == 200
        for message in sse(r):
            assert time.monotonic() < deadline, "no write woke the stream"
            if message.comment is None:
                return message
            # The keep-alive comments (every 0.5 s) pace the writes.
            write(f"w{writes}.png")
            writes += 1
    raise AssertionError("the stream ended")


def test_appends_through_the_app_wake_the_stream(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the idle poll out of the way, only a wake-up can deliver the event.
    monkeypatch.setattr(stream, "IDLE_POLL_SECONDS", 3600.0)
    deadline = time.monotonic() + DEADLINE_SECONDS
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def write(name: str) -> None:
            r = http.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
            assert r.status_code == 202, r.text

        message = first_event_while_writing(server, write, deadline)
    assert message.event == "VideoRequested"
    wait_for_no_subscribers(server)


def test_on_postgresql_appends_by_other_processes_wake_the_stream(
    server: Server, db_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has no wake probe: other processes' appends wait for the poll")
    monkeypatch.setattr(stream, "IDLE_POLL_SECONDS", 3600.0)
    deadline = time.monotonic() + DEADLINE_SECONDS
    # Not the app's service: its on_append hook never hears of these appends.
    other = VideoService(database)
    message = first_event_while_writing(
        server, lambda name: other.request_video(name, "scene", Actor("elsewhere")), deadline
    )
    assert message.body()["actor"] == "elsewhere"


class CountingQueries(VideoQueries):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reads = 0

    def events(self, *, after: str | None, limit: int, filters: FeedFilter) -> Page:
        self.reads += 1
        return super().events(after=after, limit=limit, filters=filters)


def test_an_idle_stream_reads_the_database_at_most_once_a_second(
    server: Server, database: Database
) -> None:
    counting = CountingQueries(database)
    server.app.state.queries = counting
    server.app.state.feed_ping_seconds = 0.1
    with httpx.Client(base_url=server.url, timeout=30) as http:
        started = time.monotonic()
        with http.stream("GET", STREAM) as r:
            assert r.status_code == 200
            for n, message in enumerate(sse(r), start=1):
                assert message.comment is not None, "an event on an empty log"
                if n == 25:  # 2.5 s of keep-alives
                    break
        elapsed = time.monotonic() - started
    # The first read, one more at once (see stream._follow), then one a second.
    assert 2 <= counting.reads <= 2 + elapsed / stream.IDLE_POLL_SECONDS + 1


def test_feed_signal_wakes_waiters_from_any_thread_and_forgets_closed_ones() -> None:
    signal = FeedSignal()

    async def scenario() -> tuple[bool, bool, int]:
        with signal.subscribe() as a, signal.subscribe():
            assert signal.subscriber_count == 2
            idle = await a.wait(0.01)
            notifier = threading.Thread(target=signal.notify)
            notifier.start()
            woken = await a.wait(DEADLINE_SECONDS)
            notifier.join()
        return idle, woken, signal.subscriber_count

    idle, woken, left = asyncio.run(scenario())
    assert (idle, woken, left) == (False, True, 0)


def test_feed_signal_keeps_a_notification_that_comes_between_waits() -> None:
    signal = FeedSignal()

    async def scenario() -> bool:
        with signal.subscribe() as sub:
            signal.notify()  # while the reader is busy reading, not waiting
            await asyncio.sleep(0)
            return await sub.wait(DEADLINE_SECONDS)

    assert asyncio.run(scenario()) is True


# --- filters, keep-alive, cursors, keys -----------------------------------------------


def test_the_stream_applies_the_filters_of_the_feed(server: Server) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def write(name: str, source_type: str = "scene") -> None:
            r = http.post("/v1/videos", json={"img_name": name, "source_type": source_type})
            assert r.status_code == 202, r.text
            r = http.post(f"/v1/videos/{name}/cancel", json={})
            assert r.status_code == 200, r.text

        by_type = http.stream("GET", STREAM, params={"event_type": "VideoCancelled"})
        by_name = http.stream("GET", STREAM, params={"img_name": "a.png"})
        by_source = http.stream("GET", STREAM, params={"source_type": "role_card"})
        with by_type as t, by_name as n, by_source as s:
            assert (t.status_code, n.status_code, s.status_code) == (200, 200, 200)
            # Events of other images and types come between, and the matching
            # ones last, so that a stream ignoring its filter would show them.
            write("a.png")
            write("b.png", "role_card")
            write("c.png")
            got_type = read_until(t, lambda m: m.body()["img_name"] == "c.png", deadline)
            got_name = read_until(n, lambda m: m.event == "VideoCancelled", deadline)
            got_source = read_until(s, lambda m: m.event == "VideoCancelled", deadline)

    assert [(m.body()["img_name"], m.event) for m in got_type] == [
        ("a.png", "VideoCancelled"),
        ("b.png", "VideoCancelled"),
        ("c.png", "VideoCancelled"),
    ]
    assert [(m.body()["img_name"], m.event) for m in got_name] == [
        ("a.png", "VideoRequested"),
        ("a.png", "VideoCancelled"),
    ]
    assert [(m.body()["img_name"], m.event) for m in got_source] == [
        ("b.png", "VideoRequested"),
        ("b.png", "VideoCancelled"),
    ]
    wait_for_no_subscribers(server)


def test_an_idle_stream_sends_keep_alive_comments(server: Server) -> None:
    server.app.state.feed_ping_seconds = 0.1
    deadline = time.monotonic() + DEADLINE_SECONDS
    comments = 0
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("GET", STREAM) as r,
    ):
        assert r.status_code == 200
        for message in sse(r):
            assert time.monotonic() < deadline, "no keep-alive comment arrived"
            assert message.comment is not None, "an event on an empty log"
            comments += 1
            if comments == 2:
                break
    assert comments == 2


def test_last_event_id_wins_over_after(server: Server) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name in ("a.png", "b.png", "c.png"):
            r = http.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
            assert r.status_code == 202, r.text
        feed = feed_of_length(http, 3)
        headers = {"Last-Event-ID": feed[0]["cursor"]}
        params = {"after": feed[1]["cursor"]}
        with http.stream("GET", STREAM, params=params, headers=headers) as r:
            assert r.status_code == 200
            got = read_events(r, 2, deadline)
    assert [m.body()["img_name"] for m in got] == ["b.png", "c.png"]


def test_a_stream_started_after_a_cursor_begins_after_it(server: Server) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name in ("a.png", "b.png"):
            r = http.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
            assert r.status_code == 202, r.text
        feed = feed_of_length(http, 2)
        with http.stream("GET", STREAM, params={"after": feed[0]["cursor"]}) as r:
            got = read_events(r, 1, deadline)
    assert [m.id for m in got] == [feed[1]["cursor"]]


@pytest.mark.parametrize("where", ["query", "header"])
def test_a_bad_cursor_is_a_422_problem_before_any_stream(client: TestClient, where: str) -> None:
    if where == "query":
        r = client.get(STREAM, params={"after": "not-a-cursor"})
    else:
        r = client.get(STREAM, headers={"Last-Event-ID": "not-a-cursor"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "validation_error"
    if where == "header":
        assert body["errors"][0]["loc"] == ["header", "Last-Event-ID"]


def test_a_bad_filter_is_a_422_problem(client: TestClient) -> None:
    r = client.get(STREAM, params={"event_type": "VideoExploded"})
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"


def test_the_stream_needs_a_read_key_once_keys_exist(server: Server, database: Database) -> None:
    secret = create_key(database, "dashboard", Role.READ, utcnow())
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.get(STREAM)
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        with http.stream("GET", STREAM, headers={"Authorization": f"Bearer {secret}"}) as ok:
            assert ok.status_code == 200
            assert ok.headers["content-type"].startswith("text/event-stream")


def test_openapi_documents_the_stream(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"][STREAM]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert {"401", "403", "422"} <= set(op["responses"])
    names = {p["name"] for p in op["parameters"]}
    assert {"after", "Last-Event-ID", "img_name", "source_type", "event_type"} <= names
