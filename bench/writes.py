"""Request throughput through the service (one event plus its inline
projection, committed per request) at 1, 4 and 8 connections, next to raw
psycopg2 writing the same rows in one statement each, in autocommit.

Both sides run one OS process per connection (no GIL shared between
connections), and the raw side runs with the project's triggers off
(`session_replication_role = replica`): its figure is what PostgreSQL does
with the same rows. A side is a function of the database URL that returns
one request (`raw_side`, `service_side`; the peer's in `bench/peer.py`)."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable
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

#: The rows of one request (an event and its status row), written the
#: fastest way PostgreSQL takes them: one statement, alone in autocommit
#: (one round trip, no BEGIN or COMMIT), as vidledger writes a new image's.
RAW_REQUEST = """
WITH event AS (
    INSERT INTO video_status_events (event_id, img_name, version, event_type, schema_version,
        from_status, to_status, data, actor, recorded_at, tx_id)
    VALUES (%(event_id)s, %(img_name)s, 1, 'VideoRequested', 2, 'none', 'pending', %(data)s,
        'bench', clock_timestamp(), pg_current_xact_id()::text::bigint)
    RETURNING position, recorded_at
)
INSERT INTO image_video_status (img_name, has_video, video_status, source_type, generation,
    attempts, cancel_requested, not_before, requested_at, updated_at, version, last_position)
SELECT %(img_name)s, false, 'pending', 'scene', 1, 0, false, recorded_at, recorded_at,
    recorded_at, 1, position
FROM event
ON CONFLICT (img_name) DO UPDATE SET video_status = excluded.video_status,
    version = excluded.version, last_position = excluded.last_position,
    updated_at = excluded.updated_at
"""
#: The data of a VideoRequested, as the raw side stores it.
REQUESTED = {
    "source_type": "scene",
    "prompt": None,
    "regenerate": False,
    "params": {"duration_seconds": 3.0, "fps": 24, "max_size": 1280},
}


def raw_side(url: str) -> Callable[[str], None]:
    """One request the raw way: the event and its row in one statement, in
    autocommit, on psycopg2 with the project's triggers off for the session."""
    u = make_url(url)
    conn = psycopg2.connect(f"host={u.host} port={u.port} user={u.username} dbname={u.database}")
    conn.autocommit = True
    with conn.cursor() as cur:
        # The baseline is the rows themselves, at what PostgreSQL can do.
        cur.execute("SET session_replication_role = replica")
    data = psycopg2.extras.Json(REQUESTED)

    def once(name: str) -> None:
        with conn.cursor() as cur:
            cur.execute(
                RAW_REQUEST, {"event_id": str(uuid.uuid4()), "img_name": name, "data": data}
            )

    return once


def service_side(url: str) -> Callable[[str], None]:
    """One request through the service: `request_video` on a pool of one."""
    svc = VideoService(open_database(url, pool_size=1))

    def once(name: str) -> None:
        svc.request_video(name, "scene", Actor("bench"))

    return once


def _process(
    side: Callable[[str], Callable[[str], None]],
    url: str,
    prefix: str,
    seconds: float,
    go: Any,
    results: Any,
) -> None:
    """One connection, one OS process: `side(url)`'s request in a loop for
    `seconds` after `go` is set; puts (requests, elapsed) on `results`."""
    try:
        once = side(url)
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


def run_processes(
    processes: int,
    side: Callable[[str], Callable[[str], None]],
    url: str,
    seconds: float,
    tag: str,
) -> float:
    """Requests per second of `processes` OS processes, one connection each,
    each running `side` (a module-level function: the processes are spawned)."""
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
        "connection on both sides; the raw side one statement a request, in autocommit, "
        "with the project's triggers off",
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
                seconds = SECONDS / SLICES
                base += run_processes(connections, raw_side, url, seconds, f"raw-{tag}")
                ours += run_processes(connections, service_side, url, seconds, f"svc-{tag}")
            base, ours = base / SLICES, ours / SLICES
            report.add(
                Row(
                    f"request_video, {connections} connection(s), a process each",
                    f"{ours:,.0f} events/s",
                    f"raw psycopg2, one statement, triggers off: {base:,.0f} events/s",
                    f"{ours / base:.2f}x",
                    "≥ 0.60x" if connections == 1 else "≥ 0.50x",
                )
            )
