"""Scale-out: two API processes and three worker processes on one PostgreSQL
database, as production runs it. 200 requests spread over both APIs: every
video completes exactly once, and `vidledger projections verify` is clean."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.db.engine import open_database
from app.events import store
from app.lifecycle import EventType
from tests.conftest import upgrade_and_build
from tests.integration.processes import (
    TINY,
    Processes,
    assert_processed_once,
    cli_env,
    make_png,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

IMAGES = 200
WORKERS = ("w1", "w2", "w3")


def test_two_apis_and_three_workers_complete_every_video_exactly_once(
    pg_database_factory: Any, tmp_path: Path
) -> None:
    url: str = pg_database_factory()
    upgrade_and_build(url)
    images = tmp_path / "images"
    names = [f"img-{i:03d}.png" for i in range(IMAGES)]
    for name in names:
        make_png(images, name, (32, 24))
    env = cli_env(url, images, tmp_path / "videos")
    procs = Processes(tmp_path, env)
    db = open_database(url, pool_size=2)
    try:
        # All five start at once; then each must be up before the first request.
        apis = [procs.server(f"api-{n}", worker=False, wait=False) for n in ("a", "b")]
        workers = [procs.worker(w) for w in WORKERS]
        for api in apis:
            api.wait_healthy()
        for w in workers:
            wait_for(lambda w=w: "worker started" in w.output(), 60, f"{w.args} started")

        def request(i: int) -> tuple[int, int]:
            api = apis[i % 2]
            body = {"img_name": names[i], "source_type": "scene", "params": TINY}
            response = httpx.post(f"{api.url}/v1/videos", json=body, timeout=30)
            return i % 2, response.status_code

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(request, range(IMAGES)))
        assert Counter(answers) == {(0, 202): IMAGES // 2, (1, 202): IMAGES // 2}

        def completed() -> bool:
            with db.read() as conn:
                done = conn.exec_driver_sql(
                    "SELECT count(*) FROM image_video_status WHERE video_status = 'completed'"
                ).scalar()
            return done == IMAGES

        wait_for(completed, 180, "every video completed")

        finishers: Counter[str] = Counter()
        with db.read() as conn:
            for name in names:
                stream = store.read_stream(conn, name)
                assert_processed_once(name, stream)
                kinds = Counter(e.event_type for e in stream)
                assert kinds[EventType.REQUESTED] == 1, name
                # No lease expired, so no image was ever started twice.
                assert kinds[EventType.PROCESSING_STARTED] == 1, [e.event_type for e in stream]
                finishers.update(e.actor for e in stream if e.event_type is EventType.COMPLETED)
        assert set(finishers) == {f"worker:{w}" for w in WORKERS}, finishers

        # Both APIs read the same truth.
        for i, name in enumerate(names[:20]):
            status = httpx.get(f"{apis[(i + 1) % 2].url}/v1/videos/{quote(name)}").json()
            assert (status["video_status"], status["has_video"]) == ("completed", True)

        verified = subprocess.run(
            [sys.executable, "-m", "app.cli", "projections", "verify"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr

        for w in workers:  # SIGTERM: each finishes cleanly
            assert w.stop() == 0, w.output()
    finally:
        procs.stop_all()
        db.dispose()
