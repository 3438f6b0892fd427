"""Status rows in bulk for read benchmarks, loaded with COPY.

Images are `img<i>.png`. Their statuses are mixed as in a live service (most
completed, some pending, processing with a lease, failed, cancelled,
deleted), over three source types and three generators (`kenburns` most,
`svd`, `zoom`), with `updated_at` increasing with i.
Only the projection is written: reads never look at the log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from app.db.copy_text import COPY_NULL
from app.db.engine import Database
from app.db.tables import image_status, leases

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 100_000
SOURCES = ("role_card", "scene", "upload")
#: One image in ten is `svd`'s, one in twenty `zoom`'s, the rest `kenburns`'s.
GENERATORS = ("svd",) * 2 + ("zoom",) + ("kenburns",) * 17
N = COPY_NULL

STATUS_COLUMNS = [
    "img_name",
    "has_video",
    "video_status",
    "video_filename",
    "source_type",
    "prompt",
    "generation",
    "attempts",
    "error_code",
    "error_message",
    "error_retryable",
    "cancel_requested",
    "not_before",
    "requested_at",
    "started_at",
    "completed_at",
    "updated_at",
    "version",
    "last_position",
    "generator",
]
LEASE_COLUMNS = [
    "img_name",
    "lease_token",
    "worker_id",
    "generation",
    "attempt",
    "claimed_at",
    "expires_at",
    "lease_seconds",
    "progress",
]


def _status_line(i: int) -> str:
    name = f"img{i}.png"
    at = EPOCH + timedelta(seconds=i)
    req, start, end = at.isoformat(), (at + timedelta(seconds=1)).isoformat(), None
    r = i % 100
    video = N
    error = [N, N, N]
    not_before = started = completed = N
    if r < 70:
        status, has, version, attempts = "completed", "t", 3, 1
        video, started = f"{name}.g1.a1.mp4", start
        end = completed = (at + timedelta(seconds=9)).isoformat()
    elif r < 80:
        status, has, version, attempts = "pending", "f", 1, 0
        not_before = req
    elif r == 80:
        status, has, version, attempts = "processing", "f", 2, 1
        started = start
    elif r < 86:
        status, has, version, attempts = "failed", "f", 3, 1
        error, started = ["image.not_found", "no such image", "f"], start
    elif r < 90:
        status, has, version, attempts = "cancelled", "f", 2, 0
    else:
        status, has, version, attempts = "none", "f", 4, 1
    updated = end or req
    return "\t".join(
        [
            name,
            has,
            status,
            video,
            SOURCES[i % 3],
            "slow zoom",
            "1",
            str(attempts),
            *error,
            "f",
            not_before,
            req,
            started,
            completed,
            updated,
            str(version),
            str(i),
            GENERATORS[(i // 7) % len(GENERATORS)],
        ]
    )


def _lease_line(i: int) -> str:
    at = EPOCH + timedelta(seconds=i + 1)
    expires = at + timedelta(days=3650)  # never reaped during a benchmark
    fields = [f"img{i}.png", f"{i:032x}", "bench", "1", "1", at.isoformat(), expires.isoformat()]
    return "\t".join([*fields, "60", "0.5"])


def _chunks(start: int, stop: int) -> Iterator[range]:
    for first in range(start, stop, CHUNK):
        yield range(first, min(first + CHUNK, stop))


def load(db: Database, start: int, stop: int) -> float:
    """COPY images `start` … `stop - 1` (and leases of the processing ones),
    then ANALYZE; returns the seconds it took."""
    began = time.perf_counter()
    for chunk in _chunks(start, stop):
        with db.write() as conn:
            db.backend.copy_in(conn, image_status, STATUS_COLUMNS, (_status_line(i) for i in chunk))
            db.backend.copy_in(
                conn, leases, LEASE_COLUMNS, (_lease_line(i) for i in chunk if i % 100 == 80)
            )
    with db.write() as conn:
        conn.execute(text("ANALYZE image_video_status"))
        conn.execute(text("ANALYZE video_task_leases"))
    return time.perf_counter() - began
