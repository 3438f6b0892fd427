"""vidledger_client against a real `vidledger serve`, on SQLite and PostgreSQL.

The server runs with its embedded worker off: the tests drive the worker API
through the client themselves, so each step of a video's life is theirs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import vidledger_client as vl
from standardwebhooks.webhooks import Webhook

from app.db.engine import Database
from app.keys import Role, create_key
from app.service import utcnow
from tests.integration.processes import Processes, Server, cli_env, free_port, wait_for
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = cli_env(
        db_url,
        tmp_path / "images",
        tmp_path / "videos",
        webhook_allowed_networks="127.0.0.0/8",
        log_level="warning",
    )
    processes = Processes(tmp_path, env)
    yield processes
    processes.stop_all()


@pytest.fixture
def server(procs: Processes) -> Server:
    return procs.server("api", worker=False)


@pytest.fixture
def client(server: Server) -> Iterator[vl.VidLedger]:
    with vl.VidLedger(server.url, timeout=10) as made:
        yield made


def _make_video(client: vl.VidLedger, videos: Path, img: str, worker: str = "w1") -> vl.VideoStatus:
    """Claim the image's task and complete it with a real file."""
    task = client.worker.claim(worker)
    assert task is not None and task.img_name == img
    beat = client.worker.heartbeat(img, task.lease_token, progress=0.5)
    assert beat.cancel_requested is False
    videos.mkdir(parents=True, exist_ok=True)
    (videos / f"{img}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return client.worker.complete(img, task.lease_token, f"{img}.mp4", {"frames": 2})


def test_a_video_s_life_through_the_client(
    client: vl.VidLedger, tmp_path: Path, server: Server
) -> None:
    videos = tmp_path / "videos"
    made = client.videos.request("cat.png", "scene", prompt="slow zoom", params={"fps": 4})
    assert (made.video_status, made.prompt, made.generator) == ("pending", "slow zoom", "kenburns")
    with pytest.raises(vl.VideoInProgress) as caught:
        client.videos.request("cat.png", "scene")
    assert caught.value.status == 409 and caught.value.code == "video_in_progress"
    assert caught.value.request_id  # the server's X-Request-ID, to quote to an operator

    done = _make_video(client, videos, "cat.png")
    assert done.video_status == "completed" and done.has_video
    assert client.videos.has_video("cat.png") is True
    assert client.videos.get("cat.png", version=1).video_status == "pending"
    assert client.videos.get("cat.png", at=datetime.now(UTC)).version == 3
    with pytest.raises(vl.VideoExists):
        client.videos.request("cat.png", "scene")

    # Downloads stream to a file, and resume from a partial one with Range.
    target = tmp_path / "out" / "cat.mp4"
    target.parent.mkdir()
    whole = (videos / "cat.png.mp4").read_bytes()
    target.with_name("cat.mp4.part").write_bytes(whole[:1000])
    assert client.videos.download("cat.png", target).read_bytes() == whole
    assert not target.with_name("cat.mp4.part").exists()
    with pytest.raises(vl.NotFound):
        client.videos.download("never.png", tmp_path / "never.mp4")

    history = list(client.videos.history("cat.png", page_size=1))  # one page per transition
    assert [t.to_status for t in history] == ["pending", "processing", "completed"]
    assert [t.version for t in history] == [1, 2, 3]

    for i in range(3):
        client.videos.request(f"dog{i}.png", "role_card")
    listed = list(client.videos.list(source_type="role_card", page_size=2))
    assert sorted(s.img_name for s in listed) == ["dog0.png", "dog1.png", "dog2.png"]
    batch = client.videos.batch(["dog2.png", "cat.png", "none.png"])
    assert [s.video_status for s in batch] == ["pending", "completed", "none"]

    cancelled = client.videos.cancel("dog0.png", reason="changed my mind")
    assert cancelled.video_status == "cancelled"
    assert client.videos.retry("dog0.png").video_status == "pending"
    with pytest.raises(vl.InvalidTransition):
        client.videos.delete("dog1.png")  # pending: nothing to delete yet
    assert client.videos.delete("cat.png").video_status == "none"

    # A worker hands a task back untouched, and acknowledges a cancel.
    task = client.worker.claim("w2", lease_seconds=30)
    assert task is not None and task.img_name == "dog1.png"
    client.worker.release(task.img_name, task.lease_token)
    assert client.videos.get("dog1.png").video_status == "pending"
    task = client.worker.claim("w2")
    assert task is not None
    assert client.videos.cancel(task.img_name).cancel_requested is True
    assert client.worker.heartbeat(task.img_name, task.lease_token).cancel_requested is True
    client.worker.cancelled(task.img_name, task.lease_token)
    assert client.videos.get(task.img_name).video_status == "cancelled"
    last = client.events.tail(2)
    assert [e.event_type for e in last] == ["VideoCancelRequested", "VideoCancelled"]

    gens = client.generators.list()
    assert [(g.name, g.default) for g in gens] == [("kenburns", True)]
    assert client.stats().by_status["pending"] == 2
    assert client.me().role == "admin"  # open on loopback: no key exists


def test_errors_are_caught_by_name(
    client: vl.VidLedger, server: Server, database: Database
) -> None:
    with pytest.raises(vl.ValidationError) as bad:
        client.videos.request("a.png", "Not A Type")
    assert bad.value.errors and bad.value.errors[0]["loc"][-1] == "source_type"
    with pytest.raises(vl.InvalidTransition):
        client.videos.cancel("nothing.png")
    client.videos.request("a.png", "scene")
    with pytest.raises(vl.LeaseLost):
        client.worker.heartbeat("a.png", "not-the-token")

    reader = create_key(database, "reader", Role.READ, utcnow())
    with vl.VidLedger(server.url, api_key=reader) as reading:
        assert reading.videos.get("a.png").video_status == "pending"
        with pytest.raises(vl.Forbidden):
            reading.videos.request("b.png", "scene")
    with (
        vl.VidLedger(server.url, api_key="vl_wrong_key") as stranger,
        pytest.raises(vl.Unauthorized),
    ):
        stranger.videos.get("a.png")
    with (
        vl.VidLedger(f"http://127.0.0.1:{free_port()}", max_retries=1) as nobody,
        pytest.raises(vl.ConnectionFailed),
    ):
        nobody.videos.get("a.png")


def test_wait_follows_the_stream_and_raises_when_it_fails(
    client: vl.VidLedger, tmp_path: Path
) -> None:
    client.videos.request("cat.png", "scene")
    waited: list[object] = []
    thread = threading.Thread(
        target=lambda: waited.append(client.videos.wait("cat.png", timeout=30))
    )
    thread.start()
    time.sleep(0.5)
    _make_video(client, tmp_path / "videos", "cat.png")
    thread.join(30)
    assert isinstance(waited[0], vl.VideoStatus) and waited[0].video_status == "completed"

    client.videos.request("dog.png", "scene")
    task = client.worker.claim("w1")
    assert task is not None
    client.worker.fail("dog.png", task.lease_token, "bad_input", "not an image", retryable=False)
    with pytest.raises(vl.VideoFailed) as failed:
        client.videos.wait("dog.png", timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.code == "bad_input"

    client.videos.request("slow.png", "scene")
    with pytest.raises(vl.WaitTimeout) as late:
        client.videos.wait("slow.png", timeout=1.0)
    assert isinstance(late.value.last, vl.VideoStatus) and late.value.last.video_status == "pending"


def test_the_event_stream_resumes_across_a_server_restart(
    procs: Processes, server: Server, client: vl.VidLedger
) -> None:
    for i in range(3):
        client.videos.request(f"a{i}.png", "scene")
    stream = client.events.stream()
    seen = [next(stream) for _ in range(3)]
    server.stop()  # SIGTERM, with the stream open
    restarted = Server(server.env, server.log_path, port=server.port, worker=False)
    procs.started.append(restarted)
    restarted.wait_healthy()
    for i in range(3, 6):
        client.videos.request(f"a{i}.png", "scene")
    seen += [next(stream) for _ in range(3)]
    stream.close()
    logged = list(client.events.list())
    assert [e.cursor for e in seen] == [e.cursor for e in logged]  # nothing lost, nothing twice
    assert [e.img_name for e in seen] == [f"a{i}.png" for i in range(6)]


class _LosingProxy:
    """Forwards to the server; the first POST /v1/videos is forwarded, its
    answer dropped, and a 503 with Retry-After sent instead: a write that
    recorded, whose answer the client never got."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lost = 0
        self.keys: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                if self.command == "POST" and self.path == "/v1/videos":
                    proxy.keys.append(self.headers.get("idempotency-key"))
                    if not proxy.lost:
                        proxy.lost += 1
                        self.send_response(503)
                        self.send_header("Retry-After", "1")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    skip = ("content-length", "content-encoding", "transfer-encoding", "connection")
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *_: object) -> None:
                """Quiet."""

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_a_write_retried_after_a_503_records_once(server: Server, client: vl.VidLedger) -> None:
    proxy = _LosingProxy(server.url)
    try:
        with vl.VidLedger(proxy.url) as through:
            started = time.monotonic()
            made = through.videos.request("cat.png", "scene")
            assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    finally:
        proxy.close()
    assert made.video_status == "pending" and made.version == 1
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1]  # one key, both tries
    assert [t.event_type for t in client.videos.history("cat.png")] == ["VideoRequested"]


def test_webhook_endpoints_and_verified_deliveries(
    client: vl.VidLedger, receiver: Receiver
) -> None:
    endpoint = client.webhooks.create(
        receiver.url, description="app", event_types=["VideoRequested"]
    )
    assert endpoint.secret.startswith("whsec_") and endpoint.state == "enabled"
    assert [e.id for e in client.webhooks.list()] == [endpoint.id]
    client.videos.request("cat.png", "scene")
    wait_for(lambda: len(receiver.received) == 1, 30, "the delivery")
    got = receiver.received[0]
    message = client.webhooks.verify(got.body, got.headers, endpoint.secret)
    assert message.type == "VideoRequested"
    assert message.event is not None and message.event.img_name == "cat.png"
    assert message.event.event_id == got.headers["webhook-id"]
    with pytest.raises(vl.WebhookVerificationError):
        client.webhooks.verify(got.body + b" ", got.headers, endpoint.secret)
    with pytest.raises(vl.WebhookVerificationError):
        client.webhooks.verify(got.body, got.headers, endpoint.secret, now=time.time() + 3600)
    wait_for(
        lambda: [d.status for d in client.webhooks.deliveries(endpoint.id)] == ["succeeded"],
        10,
        "the delivery recorded",
    )
    [delivery] = client.webhooks.deliveries(endpoint.id, status="succeeded")
    assert client.webhooks.replay_delivery(delivery.id).status == "pending"
    wait_for(lambda: len(receiver.received) == 2, 30, "the replay")

    assert client.webhooks.replay(endpoint.id, after=message.event.cursor) == 0  # none after it
    assert client.webhooks.replay(endpoint.id, since="2020-01-01T00:00:00Z") == 1
    wait_for(lambda: len(receiver.received) == 3, 30, "the replay of all since then")

    new_secret = client.webhooks.rotate_secret(endpoint.id)
    client.webhooks.send_test(endpoint.id)
    wait_for(lambda: len(receiver.received) == 4, 30, "the test message")
    test = receiver.received[3]
    for secret in (endpoint.secret, new_secret):  # both live: both verify
        assert client.webhooks.verify(test.body, test.headers, secret).type == "webhook.test"
    assert client.webhooks.update(endpoint.id, state="disabled").state == "disabled"
    client.webhooks.delete(endpoint.id)
    with pytest.raises(vl.NotFound):
        client.webhooks.get(endpoint.id)


def test_verify_agrees_with_the_standard_webhooks_library() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"VideoRequested","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    now = time.time()
    signature = Webhook(secret).sign("msg_1", datetime.fromtimestamp(int(now), UTC), body.decode())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signature,
    }
    assert vl.verify(body, headers, secret).type == "VideoRequested"


def test_the_async_client_has_the_same_surface(
    server: Server, client: vl.VidLedger, tmp_path: Path
) -> None:
    async def scenario() -> list[str]:
        async with vl.AsyncVidLedger(server.url, timeout=10) as aio:
            made = await aio.videos.request("cat.png", "scene")
            assert made.video_status == "pending"
            waiting = asyncio.create_task(aio.videos.wait("cat.png", timeout=30))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(_make_video, client, tmp_path / "videos", "cat.png")
            assert (await waiting).video_status == "completed"
            assert await aio.videos.has_video("cat.png")
            saved = await aio.videos.download("cat.png", tmp_path / "a.mp4")
            assert saved.read_bytes() == (tmp_path / "videos" / "cat.png.mp4").read_bytes()
            history = [t.to_status async for t in aio.videos.history("cat.png")]
            assert history == ["pending", "processing", "completed"]
            listed = [s.img_name async for s in aio.videos.list()]
            assert listed == ["cat.png"]
            events = aio.events.stream()
            streamed = [(await anext(events)).event_type for _ in range(3)]
            await events.aclose()
            with pytest.raises(vl.VideoExists):
                await aio.videos.request("cat.png", "scene")
            assert [g.name for g in await aio.generators.list()] == ["kenburns"]
            return streamed

    # A thread of its own: an earlier test's library may leave this one's loop running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        streamed = pool.submit(asyncio.run, scenario()).result(timeout=120)
    assert streamed == [
        "VideoRequested",
        "VideoProcessingStarted",
        "VideoCompleted",
    ]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,  # no local database here: everything comes from the server
    )


def test_the_cli_reads_a_remote_server_through_the_client(
    client: vl.VidLedger, server: Server, tmp_path: Path, database: Database
) -> None:
    client.videos.request("cat.png", "scene", prompt="zoom")
    _make_video(client, tmp_path / "videos", "cat.png")
    key = create_key(database, "ops", Role.READ, utcnow())
    here = tmp_path / "elsewhere"
    here.mkdir()

    status = _cli("status", "cat.png", "--url", server.url, "--api-key", key, "--json", cwd=here)
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert (body["video_status"], body["prompt"], body["version"]) == ("completed", "zoom", 3)
    table = _cli("status", "cat.png", "--url", server.url, "--api-key", key, cwd=here)
    assert "completed" in table.stdout

    history = _cli("history", "cat.png", "--url", server.url, "--api-key", key, "--json", cwd=here)
    assert [json.loads(line)["to_status"] for line in history.stdout.splitlines()] == [
        "pending",
        "processing",
        "completed",
    ]
    tail = _cli("events", "tail", "--limit", "1", "--url", server.url, "--api-key", key, cwd=here)
    assert tail.returncode == 0 and "VideoCompleted" in tail.stdout, tail.stderr
    assert not (here / "var").exists()  # no local database was made

    refused = _cli("status", "cat.png", "--url", server.url, "--api-key", "vl_bad", cwd=here)
    assert refused.returncode == 1 and "unauthorized" in refused.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = _cli("status", "cat.png", "--url", nobody, cwd=here)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: ") and "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1
