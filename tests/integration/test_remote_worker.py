"""`vidledger worker --remote`: the same loop over the worker HTTP API of a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.errors import Forbidden
from app.events import store
from app.keys import Role, create_key
from app.service import Actor, VideoService, utcnow
from app.service.queries import VideoQueries
from app.worker.backend import RemoteBackend
from app.worker.generators import KenBurnsGenerator
from app.worker.loop import Worker, WorkerConfig
from tests.integration.processes import free_port, make_png, wait_for


@pytest.fixture
def server(settings: Settings, database: Database) -> Iterator[str]:
    port = free_port()
    app = create_app(settings, db=database)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_a_remote_worker_makes_the_video_through_the_http_api(
    server: str, settings: Settings, database: Database, tmp_path: Path
) -> None:
    secret = create_key(database, "gpu-host", Role.WORKER, utcnow())
    make_png(settings.images_dir, "cat.png")
    VideoService(database).request_video("cat.png", "scene", Actor("app"), params={"fps": 4})
    cfg = WorkerConfig("gpu1", settings.images_dir, settings.videos_dir, poll_seconds=0.05)
    worker = Worker(RemoteBackend(server, secret), {"kenburns": KenBurnsGenerator()}, cfg)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        q = VideoQueries(database)
        wait_for(lambda: q.status("cat.png").row.video_status == "completed")
    finally:
        worker.stop.set()
        worker.wake.set()
        thread.join(30)
    with database.read() as conn:
        actors = [e.actor for e in store.read_stream(conn, "cat.png")]
    assert actors == ["app", "worker:gpu1", "worker:gpu1"]
    assert (settings.videos_dir / q.status("cat.png").row.video_filename).stat().st_size > 0


def test_a_remote_worker_with_a_read_key_is_refused(server: str, database: Database) -> None:
    secret = create_key(database, "reader", Role.READ, utcnow())
    backend = RemoteBackend(server, secret)
    try:
        with pytest.raises(Forbidden, match="403"):
            backend.claim("w", None, None, None)
    finally:
        backend.close()
