"""The `cog` generator against a real Cog model server (the example predictor
under cog + coglet), through the worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from app.db.engine import Database
from app.events import store
from app.lifecycle import EventType
from app.service import Actor, GeneratorNames, Policy, VideoService
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker.backend import LocalBackend
from app.worker.generators import GenerationRequest, catalog
from app.worker.generators.cog import prediction_id
from app.worker.loop import Worker, WorkerConfig
from tests.integration.cog_server import (
    EXAMPLE,
    NOT_VIDEO,
    CogServer,
    FlakyProxy,
    UploadStore,
)
from tests.integration.processes import CliProcess, cli_env, free_port, make_png, wait_for

pytestmark = pytest.mark.slow
ME = Actor("app")
#: A slow model: 24 frames at 0.1 s each, so that progress and a cancel can be seen.
SLOW = {"duration_seconds": 2.0, "fps": 12, "size": 128, "seconds_per_frame": 0.1}
INPUT = (
    'input = { image = "{image}", prompt = "{prompt}", size = "{params.size}", '
    'fps = "{params.fps}", duration_seconds = "{params.duration_seconds}", '
    'seconds_per_frame = "{params.seconds_per_frame}" }'
)


def unique(name: str) -> str:
    """Prediction ids derive from the image's name: one model server serves every
    test, so each test's images are its own."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{uuid.uuid4().hex[:8]}{dot}{ext}"


def generators_toml(url: str, name: str = "svd", inputs: str = INPUT, **extra: str) -> str:
    lines = [
        f'default = "{name}"',
        f"[generators.{name}]",
        'kind = "cog"',
        f'url = "{url}"',
        inputs,
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServer]:
    server = CogServer(EXAMPLE, tmp_path_factory.mktemp("cog") / "cog.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServer]:
    server = CogServer(NOT_VIDEO, tmp_path_factory.mktemp("cog-bad") / "cog.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uploading_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CogServer, UploadStore]]:
    store = UploadStore()
    log = tmp_path_factory.mktemp("cog-upload") / "cog.log"
    server = CogServer(EXAMPLE, log, upload_url=store.url)
    yield server, store
    server.stop()
    store.stop()


class Setup:
    """A service offering the file's generators, and workers running them in threads."""

    def __init__(self, database: Database, tmp_path: Path, toml: str, **policy: Any) -> None:
        self.images, self.videos = tmp_path / "images", tmp_path / "videos"
        self.file = tmp_path / "generators.toml"
        self.file.write_text(toml)
        self.catalog = catalog.load(self.file)
        self.svc = VideoService(
            database,
            Policy(
                **{
                    "max_attempts": 3,
                    "lease_seconds": 3,
                    "backoff_base_seconds": 0.05,
                    "backoff_cap_seconds": 0.1,
                    **policy,
                },
                generators=GeneratorNames(self.catalog.names, self.catalog.default),
            ),
            files=VideoFiles(self.videos),
        )
        self.q = VideoQueries(database)
        self.database = database
        self.threads: list[tuple[Worker, threading.Thread]] = []

    def worker(self, worker_id: str = "w1", **config: Any) -> Worker:
        cfg = WorkerConfig(
            worker_id=worker_id,
            images_dir=self.images,
            videos_dir=self.videos,
            poll_seconds=0.05,
            reap_seconds=0.2,
            lease_seconds=2,
            **config,
        )
        worker = Worker(LocalBackend(self.svc), self.catalog.select(None), cfg)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.threads.append((worker, thread))
        return worker

    def stop(self) -> None:
        for worker, _ in self.threads:
            worker.stop.set()
            worker.wake.set()
        for _, thread in self.threads:
            thread.join(30)

    def status(self, img: str) -> Any:
        return self.q.status(img)

    def events(self, img: str) -> list[Any]:
        with self.database.read() as conn:
            return store.read_stream(conn, img)


@pytest.fixture
def setups(database: Database, tmp_path: Path) -> Iterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for s in made:
        s.stop()


def make(setups: list[Setup], database: Database, tmp_path: Path, toml: str, **kw: Any) -> Setup:
    s = Setup(database, tmp_path, toml, **kw)
    setups.append(s)
    return s


def test_a_cog_model_makes_the_video_and_reports_progress(
    model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("cat.png")
    s = make(setups, database, tmp_path, generators_toml(model.url))
    make_png(s.images, img, (640, 480))
    s.svc.request_video(img, "scene", ME, prompt="slow zoom", params=SLOW)
    s.worker()
    seen: set[float] = set()
    deadline = time.monotonic() + 60
    while True:
        state = s.status(img)  # one read per look: it may complete between two
        status = state.row.video_status.value
        if status == "completed":
            break
        assert status in ("pending", "processing"), state.row
        if status == "processing" and state.progress is not None:
            seen.add(state.progress)
        assert time.monotonic() < deadline, "not completed in time"
        time.sleep(0.05)
    assert len({p for p in seen if 0 < p < 1}) >= 2, f"progress seen: {sorted(seen)}"

    row = s.status(img).row
    assert row.generator == "svd"
    with av.open(str(s.videos / row.video_filename)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 96)
    assert len(frames) == 24
    completed = s.events(img)[-1]
    assert completed.event_type is EventType.COMPLETED
    assert completed.data["metadata"]["generator"] == "svd"
    assert completed.data["metadata"]["frames"] == 24


def test_an_output_uploaded_to_a_url_is_fetched_from_there(
    uploading_model: tuple[CogServer, UploadStore],
    database: Database,
    tmp_path: Path,
    setups: list[Setup],
) -> None:
    model, uploads = uploading_model
    img = unique("cat.png")
    s = make(setups, database, tmp_path, generators_toml(model.url))
    make_png(s.images, img, (640, 480))
    s.svc.request_video(img, "scene", ME, params={**SLOW, "seconds_per_frame": 0.0})
    s.worker()
    wait_for(lambda: s.status(img).row.video_status.value == "completed", timeout=30)
    row = s.status(img).row
    assert (s.videos / row.video_filename).read_bytes() == uploads.files["/upload/video.mp4"]


def test_a_lost_answer_reattaches_to_the_running_prediction(
    model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    proxy = FlakyProxy(model.port)
    try:
        img = unique("cat.png")
        s = make(setups, database, tmp_path, generators_toml(proxy.url))
        make_png(s.images, img, (320, 240))
        proxy.drop_next_put_answer = True  # the PUT starts the prediction; its answer is lost
        s.svc.request_video(img, "scene", ME, params=SLOW)
        s.worker()
        wait_for(lambda: s.status(img).row.video_status.value == "completed", timeout=60)
    finally:
        proxy.stop()
    assert proxy.dropped >= 1
    pid = prediction_id(GenerationRequest(Path(), Path(), img_name=img))
    assert model.starts()[pid] == 1, "the PUT sent again reattached; it started nothing"
    kinds = [e.event_type for e in s.events(img)]
    assert kinds == [EventType.REQUESTED, EventType.PROCESSING_STARTED, EventType.COMPLETED]


def test_a_cancel_stops_the_model(
    model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("dog.png")
    s = make(setups, database, tmp_path, generators_toml(model.url))
    make_png(s.images, img, (320, 240))
    long = {**SLOW, "duration_seconds": 10.0}  # 120 frames: 12 s unless stopped
    s.svc.request_video(img, "scene", ME, params=long)
    s.worker()
    wait_for(lambda: (s.status(img).progress or 0) > 0, timeout=30, what="progress")
    s.svc.cancel_video(img, ME)
    cancelled_at = time.monotonic()
    wait_for(lambda: s.status(img).row.video_status.value == "cancelled", timeout=10)
    assert time.monotonic() - cancelled_at < 6

    pid = prediction_id(GenerationRequest(Path(), Path(), img_name=img))
    wait_for(lambda: "Prediction cancelled" in model.messages(pid), timeout=5)
    messages = model.messages(pid)
    time.sleep(1.0)  # a model that kept going would print more progress lines
    assert model.messages(pid) == messages
    assert not any("120/120" in m for m in messages)


def test_a_model_that_raises_fails_the_video_with_its_message(
    model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("notes.png")
    s = make(setups, database, tmp_path, generators_toml(model.url))
    s.images.mkdir(parents=True)
    (s.images / img).write_bytes(b"not a picture at all")
    s.svc.request_video(img, "upload", ME, params=SLOW)
    s.worker()
    wait_for(lambda: s.status(img).row.video_status.value == "failed", timeout=30)
    row = s.status(img).row
    assert row.error_code == "provider.failed"
    assert row.error_retryable is False
    assert "the image cannot be read" in (row.error_message or "")
    assert "Prediction failed" not in (row.error_message or "")
    assert row.attempts == 1  # not retryable: tried once


def test_an_input_the_model_refuses_is_rejected_and_not_retried(
    model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("cat.png")
    s = make(setups, database, tmp_path, generators_toml(model.url))
    make_png(s.images, img)
    s.svc.request_video(img, "scene", ME, params={**SLOW, "fps": 100})  # the model allows 1-30
    s.worker()
    wait_for(lambda: s.status(img).row.video_status.value == "failed", timeout=30)
    row = s.status(img).row
    assert (row.error_code, row.error_retryable, row.attempts) == ("provider.rejected", False, 1)
    assert row.error_message == (
        "the model refused the input: fps: 100 is greater than the maximum of 30"
    )


def test_a_model_server_that_is_down_is_retried_with_backoff(
    database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("cat.png")
    down = f"http://127.0.0.1:{free_port()}"
    s = make(setups, database, tmp_path, generators_toml(down), backoff_base_seconds=0.3)
    make_png(s.images, img)
    s.svc.request_video(img, "scene", ME, params=SLOW)
    s.worker()
    wait_for(lambda: s.status(img).row.video_status.value == "failed", timeout=30)
    events = s.events(img)
    retries = [e for e in events if e.event_type is EventType.RETRY_SCHEDULED]
    assert len(retries) == 2  # max_attempts 3: two retries, then failed
    for retry in retries:
        assert retry.data["error"]["code"] == "provider.unreachable"
        assert retry.data["error"]["retryable"] is True
        waited = (retry.data["not_before"], retry.recorded_at.isoformat())
        assert waited[0] > waited[1], "each retry waits its backoff"
    assert s.status(img).row.error_code == "provider.unreachable"


def test_an_output_that_is_not_a_video_is_bad_output(
    broken_model: CogServer, database: Database, tmp_path: Path, setups: list[Setup]
) -> None:
    img = unique("cat.png")
    toml = generators_toml(broken_model.url, inputs='input = { image = "{image}" }')
    s = make(setups, database, tmp_path, toml)
    make_png(s.images, img)
    s.svc.request_video(img, "scene", ME)
    s.worker()
    wait_for(lambda: s.status(img).row.video_status.value == "failed", timeout=30)
    row = s.status(img).row
    assert row.error_code == "provider.bad_output"
    assert row.error_retryable is False
    assert list(s.videos.glob("*")) == []  # nothing published, no temp file left


def test_a_worker_killed_mid_prediction_ends_in_exactly_one_video(
    model: CogServer, db_url: str, tmp_path: Path
) -> None:
    img = unique("cat.png")
    images, videos = tmp_path / "images", tmp_path / "videos"
    make_png(images, img, (320, 240))
    (tmp_path / "generators.toml").write_text(generators_toml(model.url))
    env = cli_env(
        db_url,
        images,
        videos,
        generators_file=str(tmp_path / "generators.toml"),
        lease_seconds="2",
        reap_interval_seconds="0.3",
        backoff_base_seconds="0.05",
        backoff_cap_seconds="0.1",
    )
    from app.db.engine import open_database

    db = open_database(db_url, pool_size=2)
    try:
        svc = VideoService(
            db, Policy(generators=GeneratorNames(("svd",), "svd")), files=VideoFiles(videos)
        )
        long = {**SLOW, "duration_seconds": 5.0}  # 6 s of model time
        svc.request_video(img, "scene", ME, params=long)
        first = CliProcess(["worker", "--worker-id", "doomed"], env, tmp_path / "w1" / "log")
        q = VideoQueries(db)
        wait_for(lambda: (q.status(img).progress or 0) > 0, timeout=30, what="progress")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        second = CliProcess(["worker", "--worker-id", "heir"], env, tmp_path / "w2" / "log")
        try:
            wait_for(lambda: q.status(img).row.video_status.value == "completed", 60)
        finally:
            second.stop()
        with db.read() as conn:
            events = store.read_stream(conn, img)
    finally:
        db.dispose()

    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.COMPLETED) == 1
    reaped = [e for e in events if e.event_type is EventType.RETRY_SCHEDULED]
    assert [e.data["error"]["code"] for e in reaped] == ["lease.expired"]
    assert [
        e.data["worker_id"] for e in events if e.event_type is EventType.PROCESSING_STARTED
    ] == [
        "doomed",
        "heir",
    ]
    attempt = [
        prediction_id(GenerationRequest(Path(), Path(), img_name=img, attempt=n)) for n in (1, 2)
    ]
    starts = model.starts()
    assert (starts[attempt[0]], starts[attempt[1]]) == (1, 1), "one prediction per attempt"
    # The orphan of the killed worker was cancelled, not left to hold the model.
    assert "Prediction cancelled" in model.messages(attempt[0])
    assert len(list(videos.glob("*.mp4"))) == 1
