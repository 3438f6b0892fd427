"""A peer: the `eventsourcing` library (PyPI, its PostgreSQL persistence on
psycopg 3) appending one event per new aggregate, against vidledger's
request_video (one event plus its inline projection) at the same
concurrency, on the same PostgreSQL server, measured in the same run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import make_url

from app.db import migrate
from app.db.engine import open_database
from app.projections import rebuild
from bench.pg import scratch_database
from bench.report import Report, Row
from bench.writes import SECONDS, SLICES, run_processes, service_side

CONNECTIONS = (1, 4)


def _peer_app(url: str, *, create_tables: bool) -> Any:
    """The peer's application on `url`, which makes its tables if asked.
    The library is imported here: only this suite needs it (the `bench` extra)."""
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
            "POSTGRES_POOL_SIZE": "1",
            # Concurrent CREATE TABLE IF NOT EXISTS in several processes fails
            # ("tuple concurrently updated"): the tables are made once, first.
            "CREATE_TABLE": "true" if create_tables else "false",
        }
    )


def peer_side(url: str) -> Callable[[str], None]:
    """One request the peer's way: a new aggregate and its one event, saved."""
    app = _peer_app(url, create_tables=False)

    def once(name: str) -> None:
        app.request(name, "scene")

    return once


def run(report: Report) -> None:
    print(
        "peer: eventsourcing (PostgreSQL) vs vidledger request_video, one OS process "
        "per connection on both sides",
        flush=True,
    )
    with scratch_database() as ours_url, scratch_database() as peer_url:
        migrate.upgrade(ours_url)
        db = open_database(ours_url, pool_size=1)
        rebuild.rebuild(db)
        db.dispose()
        _peer_app(peer_url, create_tables=True).close()
        run_id = uuid.uuid4().hex[:6]
        for connections in CONNECTIONS:
            theirs = ours = 0.0
            for n in range(SLICES):  # alternating: drift lands on both sides
                tag = f"{run_id}-{connections}-{n}"
                seconds = SECONDS / SLICES
                theirs += run_processes(connections, peer_side, peer_url, seconds, f"es-{tag}")
                ours += run_processes(connections, service_side, ours_url, seconds, f"vl-{tag}")
            theirs, ours = theirs / SLICES, ours / SLICES
            report.add(
                Row(
                    f"peer: new aggregate + 1 event, {connections} connection(s), a process each",
                    f"vidledger request_video: {ours:,.0f} events/s",
                    f"eventsourcing 9 (PostgreSQL): {theirs:,.0f} events/s",
                    f"{ours / theirs:.2f}x",
                    "≥ 1.50x",
                )
            )
