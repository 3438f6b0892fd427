"""Request throughput through the service (one event plus its inline
projection, committed per request) at 1, 4 and 8 connections, next to raw
psycopg2 doing the same INSERT and upsert in one commit each."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import psycopg2
import psycopg2.extras
from sqlalchemy import make_url

from app.db import migrate
from app.db.engine import open_database
from app.projections import rebuild
from app.service import Actor, VideoService
from bench.pg import scratch_database
from bench.report import Report, Row

SECONDS = 4.0
#: Each side's SECONDS are split into this many slices, raw and service
#: alternating, so that a shift in the shared machine's load between two
#: back-to-back 4 s windows does not land on one side of the ratio.
SLICES = 4

RAW_EVENT = """
INSERT INTO video_status_events (event_id, img_name, version, event_type, schema_version,
    from_status, to_status, data, actor, recorded_at, tx_id)
VALUES (%s, %s, 1, 'VideoRequested', 2, 'none', 'pending', %s, 'bench', now(),
    pg_current_xact_id()::text::bigint)
RETURNING position, recorded_at
"""
RAW_UPSERT = """
INSERT INTO image_video_status (img_name, has_video, video_status, source_type, generation,
    attempts, cancel_requested, not_before, requested_at, updated_at, version, last_position)
VALUES (%s, false, 'pending', 'scene', 1, 0, false, %s, %s, %s, 1, %s)
ON CONFLICT (img_name) DO UPDATE SET video_status = excluded.video_status,
    version = excluded.version, last_position = excluded.last_position,
    updated_at = excluded.updated_at
"""


def run_threads(threads: int, work: object, seconds: float = SECONDS) -> float:
    """Requests per second over `seconds` with `threads` workers calling work(thread, i)."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    failures: list[BaseException] = []

    def loop(t: int) -> None:
        i = 0
        try:
            while time.perf_counter() < stop:
                work(t, i)  # type: ignore[operator]
                i += 1
        except BaseException as exc:  # a dead thread would silently undercount
            failures.append(exc)
        counts[t] = i

    started = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    if failures:
        raise RuntimeError(f"a benchmark thread failed: {failures[0]!r}")
    return sum(counts) / (time.perf_counter() - started)


def alternating(threads: int, first: object, second: object) -> tuple[float, float]:
    """Requests per second of `first` and of `second`, each over SECONDS in
    SLICES slices, the two alternating: drift in the machine's load lands on
    both sides of their ratio."""
    a = b = 0.0
    for _ in range(SLICES):
        a += run_threads(threads, first, SECONDS / SLICES) / SLICES
        b += run_threads(threads, second, SECONDS / SLICES) / SLICES
    return a, b


def run(report: Report) -> None:
    print("request throughput: service vs raw psycopg2 (PostgreSQL)", flush=True)
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=10)
        rebuild.rebuild(db)
        svc = VideoService(db)
        u = make_url(url)
        dsn = f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
        raw = [psycopg2.connect(dsn) for _ in range(8)]
        run_id = uuid.uuid4().hex[:6]
        # A new image name for every request (next() on a count is atomic).
        numbers = itertools.count()
        data = psycopg2.extras.Json(
            {
                "source_type": "scene",
                "prompt": None,
                "regenerate": False,
                "params": {"duration_seconds": 3.0, "fps": 24, "max_size": 1280},
            }
        )

        def raw_request(t: int, i: int) -> None:
            conn = raw[t]
            name = f"raw-{run_id}-{next(numbers)}.png"
            with conn.cursor() as cur:
                cur.execute(RAW_EVENT, (str(uuid.uuid4()), name, data))
                position, at = cur.fetchone()  # type: ignore[misc]
                cur.execute(RAW_UPSERT, (name, at, at, at, position))
            conn.commit()

        def service_request(t: int, i: int) -> None:
            svc.request_video(f"svc-{run_id}-{next(numbers)}.png", "scene", Actor("bench"))

        try:
            for threads in (1, 4, 8):
                base, ours = alternating(threads, raw_request, service_request)
                report.add(
                    Row(
                        f"request_video, {threads} connection(s)",
                        f"{ours:,.0f} events/s",
                        f"raw psycopg2 INSERT + upsert: {base:,.0f} events/s",
                        f"{ours / base:.2f}x",
                        "≥ 0.50x",
                    )
                )
        finally:
            for c in raw:
                c.close()
            db.dispose()
