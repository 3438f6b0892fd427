"""Chaos under load, on PostgreSQL: the server is SIGKILLed and restarted, and
the database itself is restarted and stopped, while clients keep writing.

What must hold afterwards: every request that got a 2xx has its event in the
log, every image in the log has its projection row and `verify` is clean,
and while the database is down the API answers 503 `unavailable` problem JSON
(never a traceback, never a hang) and recovers on its own. A worker whose
finished video meets a short outage records it once the outage is over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg2
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.db.engine import Database, open_database
from app.errors import Unavailable
from app.events import store
from app.events.types import RecordedEvent
from app.lifecycle import EventType
from app.projections.verify import verify
from app.service import Actor, Policy, VideoService
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker import loop
from app.worker.backend import LocalBackend
from app.worker.generators import KenBurnsGenerator
from app.worker.loop import Worker, WorkerConfig
from tests.conftest import IN_CI, upgrade_and_build
from tests.integration.processes import (
    TINY,
    Processes,
    assert_processed_once,
    cli_env,
    free_port,
    make_png,
    problem_code,
    wait_for,
)
from tests.integration.receiver import Receiver

#: A client gives up after this long: a hang fails the test instead of stalling it.
CLIENT_TIMEOUT = 10.0
HTTP_WORKER = "chaos-http"


@dataclass
class Answer:
    """One request the load generator made, and what came back."""

    kind: str  # request | read | claim | complete
    img_name: str | None
    status: int | None  # None: no answer at all (connection refused or reset)
    code: Any = None  # the problem code of an error answer
    request_id: str | None = None
    error: str | None = None  # the client-side failure when there was no answer
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Load:
    """Client threads: writers request new images, a reader reads them back,
    and an HTTP worker claims and completes tasks through /v1/worker."""

    def __init__(self, url: str, images_dir: Path, writers: int = 3) -> None:
        self.url = url
        self.images_dir = images_dir
        self.stop = threading.Event()
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        targets = [*(lambda n=n: self._write(n) for n in range(writers)), self._read]
        targets.append(self._work)
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT * 3)
        assert not any(t.is_alive() for t in self.threads), "a load thread hung"

    def _record(self, answer: Answer) -> Answer:
        with self._lock:
            self.answers.append(answer)
        return answer

    def _call(
        self,
        http: httpx.Client,
        kind: str,
        method: str,
        path: str,
        img_name: str | None,
        **kwargs: Any,
    ) -> tuple[Answer, httpx.Response | None]:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            return self._record(Answer(kind, img_name, None, error=f"timeout: {exc!r}")), None
        except httpx.TransportError as exc:
            self.stop.wait(0.1)  # nobody is listening: no need to spin
            return self._record(Answer(kind, img_name, None, error=type(exc).__name__)), None
        answer = Answer(kind, img_name, response.status_code)
        if response.status_code >= 400:
            answer.code = problem_code(response)
        return self._record(answer), response

    def count(self, kind: str, ok: bool = True, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.kind == kind and a.ok == ok and a.at >= since)

    def _write(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as http:
            i = 0
            while not self.stop.is_set():
                name = f"w{n}-{i:05d}.png"
                i += 1
                make_png(self.images_dir, name, (32, 24))
                rid = uuid.uuid4().hex
                body = {"img_name": name, "source_type": "scene", "params": TINY}
                answer, _ = self._call(
                    http, "request", "POST", "/v1/videos", name, json=body,
                    headers={"X-Request-ID": rid},
                )  # fmt: skip
                answer.request_id = rid
                time.sleep(0.02)

    def _read(self) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as http:
            while not self.stop.is_set():
                with self._lock:
                    names = [a.img_name for a in self.answers[-20:] if a.kind == "request"]
                name = names[-1] if names else "never-seen.png"
                self._call(http, "read", "GET", f"/v1/videos/{quote(name)}", name)
                time.sleep(0.02)

    def _work(self) -> None:
        """Claim, then complete; a complete that got no answer is sent again."""
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as http:
            while not self.stop.is_set():
                body = {"worker_id": HTTP_WORKER}  # the server's lease: LEASE_SECONDS
                answer, response = self._call(
                    http, "claim", "POST", "/v1/worker/claim", None, json=body
                )
                if response is None or response.status_code != 200:
                    time.sleep(0.05)
                    continue
                task = response.json()
                answer.img_name = task["img_name"]
                answer.data = {"attempt": task["attempt"]}
                path = f"/v1/worker/tasks/{quote(task['img_name'], safe='')}/complete"
                done = {
                    "lease_token": task["lease_token"],
                    "video_filename": f"{task['img_name']}.mp4",
                }
                while not self.stop.is_set():
                    sent, response = self._call(
                        http, "complete", "POST", path, task["img_name"], json=done
                    )
                    sent.data = {"video_filename": done["video_filename"]}
                    if response is not None and response.status_code != 503:
                        break
                    time.sleep(0.1)


class Follower:
    """Reads /v1/events/stream from the start of the log, in a thread, until the
    server closes it; `error` says why it broke, if it did."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        timeout = httpx.Timeout(CLIENT_TIMEOUT, read=60.0)  # pings come every 15 s
        try:
            with httpx.stream("GET", f"{self.url}/v1/events/stream", timeout=timeout) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line.removeprefix("data:")))
        except BaseException as exc:
            self.error = exc


# --- checking the log -------------------------------------------------------------


def check_every_accepted_answer_is_logged(db: Database, load: Load) -> None:
    """Each 2xx answer has its event in the log, exactly once."""
    # A claim answered 204 (nothing due) wrote nothing; every other 2xx did.
    accepted = [
        a
        for a in load.answers
        if a.ok and a.kind in ("request", "claim", "complete") and a.status != 204
    ]
    names = {a.img_name for a in accepted if a.img_name}
    streams: dict[str, list[RecordedEvent]] = {}
    with db.read() as conn:
        for name in sorted(names):
            streams[name] = store.read_stream(conn, name)
    for a in accepted:
        assert a.img_name is not None
        stream = streams[a.img_name]
        if a.kind == "request":
            found = [
                e
                for e in stream
                if e.event_type is EventType.REQUESTED and e.correlation_id == a.request_id
            ]
        elif a.kind == "claim":
            found = [
                e
                for e in stream
                if e.event_type is EventType.PROCESSING_STARTED
                and e.actor == f"worker:{HTTP_WORKER}"
                and e.data["attempt"] == a.data["attempt"]
            ]
        else:
            found = [
                e
                for e in stream
                if e.event_type is EventType.COMPLETED
                and e.data["video_filename"] == a.data["video_filename"]
            ]
        assert len(found) == 1, f"accepted {a.kind} of {a.img_name} is not in the log once: {a}"


def check_projection(db: Database) -> None:
    report = verify(db)
    assert report.ok, [d.as_json() for d in report.differences[:5]]
    with db.read() as conn:
        images = conn.exec_driver_sql(
            "SELECT count(DISTINCT img_name) FROM video_status_events"
        ).scalar()
    assert report.checked == images, "an image in the log has no projection row, or vice versa"


def wait_until_settled(db: Database, timeout: float = 120.0) -> dict[str, list[RecordedEvent]]:
    """Wait until no video is pending or processing; then every image's stream."""

    def settled() -> bool:
        with db.read() as conn:
            busy = conn.exec_driver_sql(
                "SELECT count(*) FROM image_video_status"
                " WHERE video_status IN ('pending', 'processing')"
            ).scalar()
        return busy == 0

    wait_for(settled, timeout, "every video done")
    with db.read() as conn:
        names = conn.exec_driver_sql("SELECT DISTINCT img_name FROM video_status_events").scalars()
        return {name: store.read_stream(conn, name) for name in names}


def check_all_completed_once(db: Database) -> None:
    """Work interrupted by the chaos is recovered (expired leases) and done once."""
    streams = wait_until_settled(db)
    assert streams
    for name, stream in streams.items():
        assert_processed_once(name, stream)


# --- 0. no database at all ----------------------------------------------------------


def test_with_no_database_listening_the_api_answers_503_problem_json(tmp_path: Path) -> None:
    """Connection refused is an outage, not an internal error (fast, no cluster needed)."""
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing_listens"
    settings = Settings(database_url=url, images_dir=tmp_path, videos_dir=tmp_path)
    db = open_database(url, pool_size=1)
    try:
        client = TestClient(create_app(settings, db=db))  # no lifespan: nothing starts
        body = {"img_name": "cat.png", "source_type": "scene"}
        for response in (
            client.post("/v1/videos", json=body),
            client.get("/v1/videos/cat.png"),
            client.get("/v1/events"),
            client.get("/v1/stats"),
            client.get("/readyz"),
        ):
            assert response.status_code == 503, response.text
            assert problem_code(response) == "unavailable"
            assert response.headers["retry-after"] == "1"
        # What needs no database still answers.
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        db.dispose()


# --- 1. the server is SIGKILLed under load -------------------------------------------


#: Short leases, so that work a crash interrupts is retried within seconds.
CHAOS_SETTINGS = {
    "lease_seconds": "3",
    "max_attempts": "5",
    "backoff_base_seconds": "0.05",
    "backoff_cap_seconds": "0.2",
}


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_of_the_server_under_load_loses_nothing_accepted(
    pg_database_factory: Any, tmp_path: Path
) -> None:
    url: str = pg_database_factory()
    upgrade_and_build(url)
    images = tmp_path / "images"
    env = cli_env(url, images, tmp_path / "videos", **CHAOS_SETTINGS)
    procs = Processes(tmp_path, env)
    db = open_database(url, pool_size=2)
    try:
        server = procs.server("serve")
        with Load(server.url, images) as load:
            for _ in range(2):
                since = time.monotonic()
                wait_for(lambda s=since: load.count("request", since=s) >= 30, 60, "load accepted")
                server.kill()
                time.sleep(0.5)  # clients meet a dead port
                server.start()
                server.wait_healthy()
            since = time.monotonic()
            wait_for(lambda: load.count("request", since=since) >= 30, 60, "load after restart")
        refused = [a for a in load.answers if a.status is None]
        assert refused, "the kill happened while nobody was calling"
        assert not [a for a in refused if a.error and a.error.startswith("timeout")]
        errors = [a for a in load.answers if a.status is not None and a.status >= 400]
        assert all(a.code == "lease_lost" for a in errors), errors[:5]
        check_every_accepted_answer_is_logged(db, load)
        check_all_completed_once(db)
        check_projection(db)
    finally:
        procs.stop_all()
        db.dispose()


# --- 2. the database is restarted, then stopped, under load -----------------------


class Cluster:
    """A throwaway PostgreSQL cluster of this test's own (pg_createcluster), so
    that restarting it disturbs nobody else's database."""

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version, self.name, self.port = version, name, port

    def ctl(self, *args: str) -> None:
        # No systemctl redirect: the cluster is not a unit, and CI may lack systemd.
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    def create_database(self, name: str) -> str:
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"


def _newest_postgres_version() -> str | None:
    versions = [p.name for p in Path("/usr/lib/postgresql").glob("*") if p.name.isdigit()]
    return max(versions, key=int) if versions else None


CLUSTER_PREFIX = "vidledger_chaos_"


def _drop_leftover_clusters(version: str) -> None:
    """Drop throwaway clusters of test runs that died before their teardown
    (the name carries the pytest process id)."""
    for conf in Path("/etc/postgresql", version).glob(f"{CLUSTER_PREFIX}*"):
        pid = conf.name.removeprefix(CLUSTER_PREFIX)
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            subprocess.run(
                ["pg_dropcluster", "--stop", version, conf.name], capture_output=True, timeout=120
            )
        except PermissionError:
            pass  # alive, someone else's


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    version = _newest_postgres_version()
    if shutil.which("pg_createcluster") is None or version is None:
        reason = "pg_createcluster (postgresql-common) is missing: no throwaway cluster to restart"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    _drop_leftover_clusters(version)
    cluster = Cluster(version, f"{CLUSTER_PREFIX}{os.getpid()}", free_port())
    create = [
        "pg_createcluster", version, cluster.name, "--port", str(cluster.port),
        "--start-conf", "manual", "--quiet",
        # Throwaway data: no fsync, a small footprint on a shared machine.
        "-o", "fsync=off", "-o", "shared_buffers=16MB", "-o", "max_connections=100",
        "--", "--auth=trust",
    ]  # fmt: skip
    done = subprocess.run(create, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pg_createcluster failed: {done.stdout}{done.stderr}"
    try:
        cluster.ctl("start")
        yield cluster
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", version, cluster.name],
            capture_output=True,
            timeout=120,
        )


def listeners(db: Database) -> int:
    """Connections probing for other processes' appends (the feed's and each worker's)."""
    with db.read() as conn:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vidledger-wake'"
        ).scalar()
    return int(found or 0)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_database_restart_and_outage_under_load_answer_503_and_recover(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    url = own_cluster.create_database("vidledger")
    upgrade_and_build(url)
    images = tmp_path / "images"
    env = cli_env(url, images, tmp_path / "videos", **CHAOS_SETTINGS)
    procs = Processes(tmp_path, env)
    db = open_database(url, pool_size=2)
    try:
        server = procs.server("serve")  # with its in-process worker
        worker = procs.worker("standalone")
        # The feed's and the in-process worker's listeners, and the standalone one's.
        wait_for(lambda: listeners(db) == 3, 30, "three wake-probe connections")
        follower = Follower(server.url)
        with Load(server.url, images) as load:
            wait_for(lambda: load.count("request") >= 20, 60, "load accepted")

            # A restart: the service rides through it on its own.
            own_cluster.ctl("restart")
            since = time.monotonic()
            wait_for(lambda: load.count("request", since=since) >= 20, 60, "load after restart")

            # An outage: what does the API answer while the database is down?
            own_cluster.ctl("stop")
            down = time.monotonic()
            wait_for(lambda: load.count("request", ok=False, since=down) >= 10, 30, "503s")
            time.sleep(2.0)  # longer than an idle event stream's 1 s between reads
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
                body = {"img_name": "during-outage.png", "source_type": "scene"}
                for response in (
                    http.post("/v1/videos", json=body),
                    http.get("/v1/videos/w0-00000.png"),
                    http.get("/readyz"),
                ):
                    assert response.status_code == 503, response.text
                    assert problem_code(response) == "unavailable", response.text
                    assert response.headers["retry-after"]
            up = time.monotonic()
            own_cluster.ctl("start")
            wait_for(lambda: load.count("request", since=up) >= 20, 60, "load after the outage")

        assert server.alive() and worker.alive(), "a process died with its database"
        assert not [a for a in load.answers if a.status is None], "the server stopped answering"
        errors = [a for a in load.answers if not a.ok]
        assert all(a.code in ("unavailable", "lease_lost") for a in errors), errors[:5]
        outage = [a for a in errors if down <= a.at <= up and a.code == "unavailable"]
        assert len(outage) >= 10
        # Workers reconnect their wake probes, and finish all accepted work.
        db.dispose()  # this test's own pooled connections died with the server
        wait_for(lambda: listeners(db) == 3, 30, "wake probes reconnected")
        check_every_accepted_answer_is_logged(db, load)
        check_all_completed_once(db)
        check_projection(db)
        # A live event stream rode through it all: every event, once, in one response.
        with db.read() as conn:
            logged = {str(i) for i in conn.exec_driver_sql(
                "SELECT event_id FROM video_status_events").scalars()}  # fmt: skip
        wait_for(lambda: len(follower.events) >= len(logged) or follower.error is not None, 30)
        assert follower.error is None, f"the event stream broke: {follower.error!r}"
        streamed = [e["event_id"] for e in follower.events]
        assert len(streamed) == len(set(streamed)) and set(streamed) == logged
    finally:
        procs.stop_all()
        db.dispose()


# --- 3. a finished video meets a short outage ------------------------------------------


class OutageOnComplete(LocalBackend):
    """The real backend, whose first `complete` calls meet a database outage."""

    def __init__(self, service: VideoService, outages: int) -> None:
        super().__init__(service)
        self.outages = outages

    def complete(
        self, img_name: str, token: str, video_filename: str, metadata: dict[str, Any]
    ) -> None:
        if self.outages:
            self.outages -= 1
            raise Unavailable("the database is unavailable; try again shortly")
        super().complete(img_name, token, video_filename, metadata)


def test_a_finished_video_is_recorded_once_a_short_outage_is_over(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "RECORD_RETRY_SECONDS", 0.05)
    images, videos = tmp_path / "images", tmp_path / "videos"
    make_png(images, "a.png")
    svc = VideoService(database, Policy(lease_seconds=30), files=VideoFiles(videos))
    svc.request_video("a.png", "scene", Actor("app"), params=TINY)
    config = WorkerConfig("w1", images, videos, poll_seconds=0.05)
    worker = Worker(OutageOnComplete(svc, outages=2), {"kenburns": KenBurnsGenerator()}, config)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        # Well inside the 30 s lease: the worker tried again, not the reaper.
        wait_for(
            lambda: VideoQueries(database).status("a.png").row.video_status == "completed",
            20,
        )
    finally:
        worker.stop.set()
        worker.wake.set()
        thread.join(30)
    with database.read() as conn:
        stream = store.read_stream(conn, "a.png")
    assert [e.event_type for e in stream] == [
        EventType.REQUESTED,
        EventType.PROCESSING_STARTED,
        EventType.COMPLETED,
    ]
    assert (videos / stream[-1].data["video_filename"]).stat().st_size > 0


# --- 4. webhooks across a database restart ---------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_webhook_delivery_resumes_by_itself_after_a_database_restart(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    url = own_cluster.create_database("vidledger")
    upgrade_and_build(url)
    receiver = Receiver()
    receiver.start()
    env = cli_env(
        url,
        tmp_path / "images",
        tmp_path / "videos",
        webhook_allowed_networks="127.0.0.0/8",
        webhook_retry_schedule="0,0.2,0.5,1,1,1,1,1,1,1",
        log_level="warning",
    )
    procs = Processes(tmp_path, env)
    try:
        server = procs.server("serve", worker=False)
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
            assert (
                http.post("/v1/webhooks/endpoints", json={"url": receiver.url}).status_code == 201
            )

            def request(name: str) -> None:
                for _ in range(100):  # the database may be on its way back
                    answer = http.post(
                        "/v1/videos", json={"img_name": name, "source_type": "scene"}
                    )
                    if answer.status_code == 202:
                        return
                    time.sleep(0.2)
                raise AssertionError(f"{name} was never accepted")

            for i in range(5):
                request(f"before-{i}.png")
            wait_for(lambda: len(receiver.received) >= 5, 30, "the first five")
            own_cluster.ctl("restart")
            for i in range(5):
                request(f"after-{i}.png")
            wait_for(lambda: len({r.headers["webhook-id"] for r in receiver.received}) >= 10, 60)
            events = http.get("/v1/events", params={"limit": 100}).json()["items"]
        assert server.alive()
        got = {r.headers["webhook-id"] for r in receiver.received}
        assert got == {e["event_id"] for e in events}
    finally:
        procs.stop_all()
        receiver.stop()
