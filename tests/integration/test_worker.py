"""The worker loop against a real database: exactly once, crashes, cancel,
retries, shutdown and hostile names. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from app.api.views import status_body
from app.config import Settings
from app.db.engine import Database
from app.events import store
from app.lifecycle import EventType
from app.service import Actor, Policy, VideoService
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker.backend import LocalBackend
from app.worker.generators import (
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    KenBurnsGenerator,
    VideoGenerator,
)
from app.worker.loop import Worker, WorkerConfig
from tests.integration.processes import TINY, assert_processed_once, cli_env, make_png, wait_for

ME = Actor("tester")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "images", tmp_path / "videos"


@pytest.fixture
def svc(database: Database, dirs: tuple[Path, Path]) -> VideoService:
    policy = Policy(
        max_attempts=3, lease_seconds=3, backoff_base_seconds=0.05, backoff_cap_seconds=0.1
    )
    return VideoService(database, policy, files=VideoFiles(dirs[1]))


class Running:
    """Workers in threads, stopped and joined at the end of the test."""

    def __init__(self) -> None:
        self.workers: list[tuple[Worker, threading.Thread]] = []

    def start(
        self,
        svc: VideoService,
        dirs: tuple[Path, Path],
        worker_id: str,
        generator: VideoGenerator | None = None,
        **config: Any,
    ) -> Worker:
        cfg = WorkerConfig(
            worker_id=worker_id,
            images_dir=dirs[0],
            videos_dir=dirs[1],
            poll_seconds=0.05,
            reap_seconds=0.2,
            **config,
        )
        worker = Worker(LocalBackend(svc), {"kenburns": generator or KenBurnsGenerator()}, cfg)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.workers.append((worker, thread))
        return worker

    def stop(self) -> None:
        for worker, _ in self.workers:
            worker.stop.set()
            worker.wake.set()
        for _, thread in self.workers:
            thread.join(30)


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.stop()


def history(database: Database, img: str) -> list[Any]:
    with database.read() as conn:
        return store.read_stream(conn, img)


def test_a_requested_image_becomes_a_playable_mp4(
    svc: VideoService, database: Database, dirs: tuple[Path, Path], running: Running
) -> None:
    make_png(dirs[0], "cat.png", (640, 480))
    svc.request_video("cat.png", "scene", ME, params={"duration_seconds": 1.0, "fps": 12})
    running.start(svc, dirs, "w1")
    q = VideoQueries(database)
    wait_for(lambda: q.status("cat.png").row.video_status == "completed")
    status = status_body(q.status("cat.png"))
    path = dirs[1] / status["video_filename"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 480)
    assert len(frames) == 12
    completed = history(database, "cat.png")[-1]
    assert completed.data["metadata"]["frames"] == 12


def test_4_workers_40_tasks_each_completes_exactly_once(
    svc: VideoService, database: Database, dirs: tuple[Path, Path], running: Running
) -> None:
    names = [f"img{i:02d}.png" for i in range(40)]
    for name in names:
        make_png(dirs[0], name, (32, 32))
        svc.request_video(name, "scene", ME, params=TINY)
    for w in range(4):
        running.start(svc, dirs, f"w{w}")
    q = VideoQueries(database)
    wait_for(lambda: q.stats(q_now())["by_status"]["completed"] == 40, timeout=120)
    for name in names:
        assert_processed_once(name, history(database, name))


def q_now() -> Any:
    from app.service import utcnow

    return utcnow()


class FailsFirst(LocalBackend):
    """The first claim and the first reap raise what no outage looks like
    (as a SQLite connection that met "database is locked" did)."""

    def __init__(self, svc: VideoService) -> None:
        super().__init__(svc)
        self.failed: set[str] = set()

    def _first(self, what: str) -> None:
        if what not in self.failed:
            self.failed.add(what)
            raise RuntimeError(f"an unexpected {what} error")

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self._first("claim")
        return super().claim(*args, **kwargs)

    def reap(self) -> Any:
        self._first("reap")
        return super().reap()


def test_the_worker_loop_outlives_an_unexpected_error(
    svc: VideoService, database: Database, dirs: tuple[Path, Path]
) -> None:
    make_png(dirs[0], "odd.png", (64, 48))
    svc.request_video("odd.png", "scene", ME, params={"duration_seconds": 0.5, "fps": 8})
    cfg = WorkerConfig(worker_id="w-odd", images_dir=dirs[0], videos_dir=dirs[1], poll_seconds=0.05)
    backend = FailsFirst(svc)
    worker = Worker(backend, {"kenburns": KenBurnsGenerator()}, cfg)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        q = VideoQueries(database)
        wait_for(lambda: q.status("odd.png").row.video_status == "completed", 30)
        assert backend.failed == {"claim", "reap"}
        assert thread.is_alive()
    finally:
        worker.stop.set()
        worker.wake.set()
        thread.join(30)


class AlwaysFlaky:
    name = "flaky"

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        raise GenerationError("generator.timeout", "the GPU did not answer", retryable=True)


def test_retryable_failures_end_failed_after_max_attempts_with_backoff(
    svc: VideoService, database: Database, dirs: tuple[Path, Path], running: Running
) -> None:
    make_png(dirs[0], "a.png")
    svc.request_video("a.png", "scene", ME)
    running.start(svc, dirs, "w1", generator=AlwaysFlaky())
    q = VideoQueries(database)
    wait_for(lambda: q.status("a.png").row.video_status == "failed")
    events = history(database, "a.png")
    retries = [e for e in events if e.event_type is EventType.RETRY_SCHEDULED]
    assert len(retries) == 2  # MAX_ATTEMPTS 3: two retries, then failed
    for r in retries:
        assert r.data["error"]["code"] == "generator.timeout"
        assert r.data["not_before"] > r.recorded_at.isoformat()  # a real backoff
    final = status_body(q.status("a.png"))
    assert (final["attempts"], final["error"]["code"]) == (3, "generator.timeout")


class Slow:
    """Generates slowly (real frames, long video) so that tests can act mid-way."""

    name = "slow"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.inner = KenBurnsGenerator()

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        self.started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            progress(0.5)
            if should_stop():
                from app.worker.generators import GenerationCancelled

                raise GenerationCancelled()
            time.sleep(0.02)
        return self.inner.generate(request, progress, should_stop)


def test_cancel_during_processing_stops_generation_and_ends_cancelled(
    svc: VideoService, database: Database, dirs: tuple[Path, Path], running: Running
) -> None:
    make_png(dirs[0], "a.png")
    svc.request_video("a.png", "scene", ME)
    slow = Slow()
    running.start(svc, dirs, "w1", generator=slow)
    assert slow.started.wait(30)
    q = VideoQueries(database)
    wait_for(lambda: (q.status("a.png").progress or 0) > 0)  # heartbeats carry progress
    svc.cancel_video("a.png", ME)
    wait_for(lambda: q.status("a.png").row.video_status == "cancelled", timeout=20)
    last = history(database, "a.png")[-1]
    assert last.event_type is EventType.CANCELLED and last.actor == "worker:w1"
    assert not list(dirs[1].glob("*.mp4")), "a cancelled generation leaves no file"


def test_shutdown_releases_a_running_task_without_using_an_attempt(
    svc: VideoService, database: Database, dirs: tuple[Path, Path]
) -> None:
    make_png(dirs[0], "a.png")
    svc.request_video("a.png", "scene", ME)
    slow = Slow()
    cfg = WorkerConfig("w1", dirs[0], dirs[1], poll_seconds=0.05, grace_seconds=0.2)
    worker = Worker(LocalBackend(svc), {"kenburns": slow}, cfg)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert slow.started.wait(30)
    worker.stop.set()
    worker.wake.set()
    thread.join(30)
    assert not thread.is_alive()
    status = status_body(VideoQueries(database).status("a.png"))
    assert (status["video_status"], status["attempts"]) == ("pending", 0)
    assert history(database, "a.png")[-1].data["released"] is True


def test_hostile_names_never_read_outside_the_images_folder(
    svc: VideoService, database: Database, dirs: tuple[Path, Path], running: Running, tmp_path: Path
) -> None:
    secret = make_png(tmp_path / "outside", "secret.png")
    dirs[0].mkdir(parents=True, exist_ok=True)
    (dirs[0] / "link.png").symlink_to(secret)
    for name in ("link.png", "..%2Fsecret.png", "~root"):
        svc.request_video(name, "scene", ME, params=TINY)
    running.start(svc, dirs, "w1")
    q = VideoQueries(database)
    wait_for(
        lambda: all(
            q.status(n).row.video_status == "failed"
            for n in ("link.png", "..%2Fsecret.png", "~root")
        )
    )
    for name in ("link.png", "..%2Fsecret.png", "~root"):
        error = status_body(q.status(name))["error"]
        assert error["code"] == "image.not_found" and not error["retryable"]
    assert not list(dirs[1].glob("*.mp4"))


def _worker_process(settings: Settings, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = cli_env(settings.database_url, settings.images_dir, settings.videos_dir, **env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--worker-id", "doomed"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_a_worker_killed_mid_generation_is_recovered_by_the_reaper(
    settings: Settings, database: Database, dirs: tuple[Path, Path], running: Running
) -> None:
    make_png(settings.images_dir, "big.png", (640, 360))
    policy = Policy(
        max_attempts=3, lease_seconds=2, backoff_base_seconds=0.05, backoff_cap_seconds=0.1
    )
    svc = VideoService(database, policy, files=VideoFiles(settings.videos_dir))
    # A long video keeps the doomed worker busy for a while.
    svc.request_video("big.png", "scene", ME, params={"duration_seconds": 10, "fps": 24})
    proc = _worker_process(settings, {"lease_seconds": "2"})
    q = VideoQueries(database)
    try:
        wait_for(lambda: q.status("big.png").row.video_status == "processing", timeout=60)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    running.start(
        svc, (settings.images_dir, settings.videos_dir), "rescuer", task_timeout_seconds=120
    )
    wait_for(lambda: q.status("big.png").row.video_status == "completed", timeout=120)
    events = history(database, "big.png")
    retry = next(e for e in events if e.event_type is EventType.RETRY_SCHEDULED)
    assert retry.actor == "system:reaper"
    assert retry.data["error"]["code"] == "lease.expired"
    starts = [e.actor for e in events if e.event_type is EventType.PROCESSING_STARTED]
    assert starts == ["worker:doomed", "worker:rescuer"]


@pytest.mark.slow
def test_sigterm_during_a_task_releases_it_and_exits_0(
    settings: Settings, database: Database
) -> None:
    make_png(settings.images_dir, "big.png", (1280, 720))
    svc = VideoService(database, Policy(), files=VideoFiles(settings.videos_dir))
    svc.request_video("big.png", "scene", ME, params={"duration_seconds": 30, "fps": 24})
    proc = _worker_process(settings, {"shutdown_grace_seconds": "0.5"})
    q = VideoQueries(database)
    try:
        wait_for(lambda: q.status("big.png").row.video_status == "processing", timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, out.decode()
    status = status_body(q.status("big.png"))
    assert (status["video_status"], status["attempts"]) == ("pending", 0)
    assert b"released" in out
