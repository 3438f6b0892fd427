"""Reads at scale on PostgreSQL, on one database grown from 10,000 to
1,000,000 images with COPY:

- a status read's p50 at both sizes (it should not grow with the table);
- a batch status of 1,000 names, next to one `= ANY(…)` SELECT through
  psycopg2 measured in the same run;
- the query plans of the status read, the worker's claim and the listings,
  captured as the app runs them (not hand-copied SQL): none may scan a
  table that grows with the images (`GROWING`) sequentially.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg2
from sqlalchemy import Connection, Engine, event, make_url

from app.api.views import status_body
from app.db import migrate
from app.db.engine import Database, open_database
from app.db.statement import Statement
from app.keys import Access, Gate
from app.lifecycle import Status
from app.projections import rebuild
from app.service import VideoService
from app.service.queries import VideoQueries
from bench import dataset
from bench.baseline_app import STATUS_SQL
from bench.pg import scratch_database
from bench.report import Report, Row

SMALL, LARGE = 10_000, 1_000_000
READS = 2_000
BATCH = 1_000
BATCH_RUNS = 15

BATCH_SQL = STATUS_SQL.replace("WHERE s.img_name = %s", "WHERE s.img_name = ANY(%s)")


def _p50_status_ms(q: VideoQueries, images: int) -> float:
    rng = random.Random(images)
    names = [f"img{rng.randint(1, images)}.png" for _ in range(READS)]
    for name in names[:100]:  # warm the pool and the statement cache
        q.status(name)
    times = []
    for name in names:
        start = time.perf_counter()
        q.status(name)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _medians_ms(works: list[Callable[[], object]], runs: int = BATCH_RUNS) -> list[float]:
    """The median time of each of `works`, run in turn (a b c, a b c, …):
    a machine that drifts over the runs weighs on every side alike."""
    for work in works:
        work()
    times: list[list[float]] = [[] for _ in works]
    for _ in range(runs):
        for work, taken in zip(works, times, strict=True):
            start = time.perf_counter()
            work()
            taken.append(time.perf_counter() - start)
    return [statistics.median(taken) * 1e3 for taken in times]


@contextmanager
def _captured(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the app sends while inside, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, params))

    # Statements run on the driver's cursor skip SQLAlchemy's events: record
    # those as they are sent, too.
    run = Statement.run

    def run_and_capture(
        self: Statement, conn: Connection, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        seen.append((self.sql(conn.dialect), dict(params)))
        return run(self, conn, params)

    engines: list[Engine] = [db.reader, db.writer]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", capture)
    Statement.run = run_and_capture  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Statement.run = run  # type: ignore[method-assign]
        for engine in engines:
            event.remove(engine, "before_cursor_execute", capture)


def _app_statements(db: Database) -> dict[str, tuple[str, Any]]:
    """The SQL the app runs for each query worth a plan, as it runs it."""
    q = VideoQueries(db)
    svc = VideoService(db)
    caller = Access(Gate(db, loopback=True), None, "read")  # as GET /v1/videos/{img} reads
    wanted: dict[str, Callable[[], object]] = {
        "status read": lambda: q.status("img123457.png", caller),
        "queue claim": lambda: svc.claim_task("bench-explain"),
        "queue claim of one generator": lambda: svc.claim_task(
            "bench-explain", generators=["zoom"]
        ),
        "queue claim of two generators": lambda: svc.claim_task(
            "bench-explain", generators=["svd", "zoom"]
        ),
        "listing, newest first": lambda: q.list_videos(
            status=None, source_type=None, limit=50, cursor=None
        ),
        "listing by status (processing)": lambda: q.list_videos(
            status=Status.PROCESSING, source_type=None, limit=50, cursor=None
        ),
        "listing by source type and status": lambda: q.list_videos(
            status=Status.FAILED, source_type="scene", limit=50, cursor=None
        ),
    }
    found = {}
    for label, work in wanted.items():
        with _captured(db) as seen:
            work()
        # The query of interest is the first SELECT on the projection.
        found[label] = next(
            (sql, params)
            for sql, params in seen
            if sql.lstrip().upper().startswith("SELECT") and "image_video_status" in sql
        )
    return found


def _plans(dsn: str, statements: dict[str, tuple[str, Any]]) -> dict[str, str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            plans = {}
            for label, (sql, params) in statements.items():
                cur.execute("EXPLAIN " + cur.mogrify(sql, params).decode())
                plans[label] = "\n".join(r[0] for r in cur.fetchall())
        conn.rollback()
        return plans
    finally:
        conn.close()


#: Tables that grow with the images and the log: none may be scanned whole.
#: (`api_keys` holds a handful of rows; scanning it is cheaper than an index.)
GROWING = ("image_video_status", "video_status_events", "video_task_leases")


def run(report: Report) -> None:
    print(f"reads at scale: {SMALL:,} then {LARGE:,} images (PostgreSQL, COPY)", flush=True)
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=2)
        u = make_url(url)
        dsn = f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
        try:
            rebuild.rebuild(db)
            q = VideoQueries(db)
            dataset.load(db, 1, SMALL + 1)
            small_ms = _p50_status_ms(q, SMALL)
            loaded_s = dataset.load(db, SMALL + 1, LARGE + 1)
            print(f"  loaded {LARGE - SMALL:,} more images in {loaded_s:.1f} s", flush=True)
            large_ms = _p50_status_ms(q, LARGE)

            rng = random.Random(7)
            names = [f"img{rng.randint(1, LARGE)}.png" for _ in range(BATCH)]
            raw = psycopg2.connect(dsn)
            raw.autocommit = True
            try:
                with raw.cursor() as cur:

                    def raw_batch() -> None:
                        cur.execute(BATCH_SQL, (names,))
                        cur.fetchall()

                    def as_json() -> bytes:
                        # What the route answers: the statuses as the JSON body's bytes.
                        return orjson.dumps({"items": [status_body(s) for s in q.batch(names)]})

                    ours_ms, json_ms, raw_ms = _medians_ms(
                        [lambda: q.batch(names), as_json, raw_batch]
                    )
            finally:
                raw.close()
            plans = _plans(dsn, _app_statements(db))
        finally:
            db.dispose()
    report.add(
        Row(
            "status read p50, 10,000 vs 1,000,000 images",
            f"{large_ms:.2f} ms at 1,000,000",
            f"{small_ms:.2f} ms at 10,000",
            f"{large_ms / small_ms:.2f}",
            "≤ 1.5 (flat)",
        )
    )
    report.add(
        Row(
            "batch status of 1,000 names (1,000,000 images)",
            f"{ours_ms:.1f} ms",
            f"one SELECT … = ANY(…) via psycopg2: {raw_ms:.1f} ms",
            f"{ours_ms / raw_ms:.2f}x",
            "≤ 1.5x",
        )
    )
    report.add(
        Row(
            "batch status of 1,000 names, as the answer's JSON bytes",
            f"{json_ms:.1f} ms",
            f"one SELECT … = ANY(…) via psycopg2, rows only: {raw_ms:.1f} ms",
            f"{json_ms / raw_ms:.2f}x",
            "reported",
        )
    )
    for label, plan in plans.items():
        seq = [
            line.strip()
            for line in plan.splitlines()
            if any(f"Seq Scan on {table} " in line for table in GROWING)
        ]
        print(f"  EXPLAIN {label}:\n" + "\n".join(f"    {line}" for line in plan.splitlines()))
        used = sorted(
            set(re.findall(r"(?:Index|Index Only|Seq) Scan(?: Backward)? (?:using|on) (\w+)", plan))
        )
        if seq:
            report.fail(f"EXPLAIN {label}: sequential scan at {LARGE:,} rows: {seq[0]}")
        report.add(
            Row(
                f"EXPLAIN {label} ({LARGE:,} images)",
                "✗ SEQUENTIAL SCAN: " + seq[0] if seq else "no sequential scan",
                "indexes: " + ", ".join(used),
                "—",
                "no sequential scan",
            )
        )
