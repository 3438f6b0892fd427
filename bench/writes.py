"""Request throughput through the service (one event plus its inline
projection, committed per request) at 1, 4 and 8 connections, next to raw
psycopg2 doing the same INSERT and upsert in one commit each.

Both sides run one OS process per connection (no GIL shared between
connections), and the raw side runs with the project's triggers off
(`session_replication_role = replica`): its figure is what PostgreSQL does
with the same rows. `run_threads` and `alternating` remain for the peer
comparison (`bench/peer.py`)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from typing import Any

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
#: The data of a VideoRequested, as the raw side stores it.
REQUESTED = {
    "source_type": "scene",
    "prompt": None,
    "regenerate": False,
    "params": {"duration_seconds": 3.0, "fps": 24, "max_size": 1280},
}

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


def _process(side: str, url: str, prefix: str, seconds: float, go: Any, results: Any) -> None:
    """One connection, one OS process: `side` ("raw" or "service") in a loop
    for `seconds` after `go` is set; puts (requests, elapsed) on `results`."""
    try:
        if side == "raw":
            u = make_url(url)
            conn = psycopg2.connect(
                f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
            )
            with conn.cursor() as cur:
                # The project's triggers (the NOTIFY on append) off for this session:
                # the baseline is the rows themselves, at what PostgreSQL can do.
                cur.execute("SET session_replication_role = replica")
            conn.commit()
            data = psycopg2.extras.Json(REQUESTED)

            def once(name: str) -> None:
                with conn.cursor() as cur:
                    cur.execute(RAW_EVENT, (str(uuid.uuid4()), name, data))
                    position, at = cur.fetchone()  # type: ignore[misc]
                    cur.execute(RAW_UPSERT, (name, at, at, at, position))
                conn.commit()

        else:
            db = open_database(url, pool_size=1)
            svc = VideoService(db)

            def once(name: str) -> None:
                svc.request_video(name, "scene", Actor("bench"))

        once(f"{prefix}-warm.png")  # connected, statements prepared
        results.put("ready")
        go.wait()
        started = time.perf_counter()
        stop = started + seconds
        i = 0
        while time.perf_counter() < stop:
            once(f"{prefix}-{i}.png")
            i += 1
        results.put((i, time.perf_counter() - started))
    except BaseException as exc:  # a dead process would silently undercount
        results.put(exc)


def run_processes(processes: int, side: str, url: str, seconds: float, tag: str) -> float:
    """Requests per second of `processes` OS processes, one connection each."""
    spawn = multiprocessing.get_context("spawn")
    go, results = spawn.Event(), spawn.Queue()
    pool = [
        spawn.Process(target=_process, args=(side, url, f"{tag}-{p}", seconds, go, results))
        for p in range(processes)
    ]
    for proc in pool:
        proc.start()
    # Each says "ready" once connected and warm (or fails); then the clock starts.
    early = [results.get(timeout=120) for _ in pool]
    go.set()
    got = [r for r in early if r != "ready"]
    got += [results.get(timeout=seconds + 120) for _ in range(processes - len(got))]
    for proc in pool:
        proc.join(30)
    failures = [r for r in got if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(f"a benchmark process failed: {failures[0]!r}")
    return sum(n / elapsed for n, elapsed in got)


def run(report: Report) -> None:
    print(
        "request throughput: service vs raw psycopg2 (PostgreSQL), one OS process per "
        "connection on both sides; the raw side with the project's triggers off",
        flush=True,
    )
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=2)
        rebuild.rebuild(db)
        db.dispose()
        run_id = uuid.uuid4().hex[:6]
        for connections in (1, 4, 8):
            base = ours = 0.0
            for n in range(SLICES):  # alternating: drift lands on both sides
                tag = f"{run_id}-{connections}-{n}"
                base += run_processes(connections, "raw", url, SECONDS / SLICES, f"raw-{tag}")
                ours += run_processes(connections, "service", url, SECONDS / SLICES, f"svc-{tag}")
            base, ours = base / SLICES, ours / SLICES
            report.add(
                Row(
                    f"request_video, {connections} connection(s), a process each",
                    f"{ours:,.0f} events/s",
                    f"raw psycopg2 INSERT + upsert, triggers off: {base:,.0f} events/s",
                    f"{ours / base:.2f}x",
                    "≥ 0.60x" if connections == 1 else "≥ 0.50x",
                )
            )
