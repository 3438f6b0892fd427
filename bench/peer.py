"""A peer: the `eventsourcing` library (PyPI, its PostgreSQL persistence on
psycopg 3) appending one event per new aggregate, against vidledger's
request_video (one event plus its inline projection) at the same
concurrency, on the same PostgreSQL server, measured in the same run."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import make_url

from app.db import migrate
from app.db.engine import open_database
from app.projections import rebuild
from app.service import Actor, VideoService
from bench.pg import scratch_database
from bench.report import Report, Row
from bench.writes import alternating

THREADS = (1, 4)
POOL = 10


def _peer_app(url: str) -> Any:
    # Imported here: only this suite needs the library (the `bench` extra).
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Video(Aggregate):
        @event("Requested")
        def __init__(self, img_name: str, source_type: str) -> None:
            self.img_name = img_name
            self.source_type = source_type
            self.status = "pending"

    class Videos(Application[uuid.UUID]):
        def request(self, img_name: str, source_type: str) -> None:
            self.save(Video(img_name, source_type))

    u = make_url(url)
    return Videos(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(u.database),
            "POSTGRES_HOST": str(u.host),
            "POSTGRES_PORT": str(u.port),
            "POSTGRES_USER": str(u.username),
            "POSTGRES_PASSWORD": "",
            "POSTGRES_POOL_SIZE": str(POOL),
        }
    )


def run(report: Report) -> None:
    print("peer: eventsourcing (PostgreSQL) vs vidledger request_video", flush=True)
    with scratch_database() as ours_url, scratch_database() as peer_url:
        migrate.upgrade(ours_url)
        db = open_database(ours_url, pool_size=POOL)
        peer = _peer_app(peer_url)
        try:
            rebuild.rebuild(db)
            svc = VideoService(db)
            run_id = uuid.uuid4().hex[:6]
            for threads in THREADS:
                # One name per request across all slices (next() on a count is atomic).
                numbers = itertools.count()

                def peer_request(
                    t: int, i: int, numbers: Iterator[int] = numbers, threads: int = threads
                ) -> None:
                    peer.request(f"es-{run_id}-{threads}-{next(numbers)}.png", "scene")

                def our_request(
                    t: int, i: int, numbers: Iterator[int] = numbers, threads: int = threads
                ) -> None:
                    name = f"vl-{run_id}-{threads}-{next(numbers)}.png"
                    svc.request_video(name, "scene", Actor("bench"))

                theirs, ours = alternating(threads, peer_request, our_request)
                report.add(
                    Row(
                        f"peer: new aggregate + 1 event, {threads} connection(s)",
                        f"vidledger request_video: {ours:,.0f} events/s",
                        f"eventsourcing 9 (PostgreSQL): {theirs:,.0f} events/s",
                        f"{ours / theirs:.2f}x",
                        "≥ 1.00x",
                    )
                )
        finally:
            peer.close()
            db.dispose()
