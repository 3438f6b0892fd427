"""Waking sleepers when another process appends (PostgreSQL).

Each listener polls, every `POLL_SECONDS`, one cheap read: the log's newest
position and the oldest transaction still running (the snapshot's xmin).
When either moves, another process has appended, or a transaction that held
back the feed has ended, and `on_notify("")` wakes the sleepers; they read
what is new themselves, so a missed or spurious wake loses nothing. Appends
in this process wake its sleepers at once through the service's `on_append`
hook.

It replaced a per-row `NOTIFY` trigger (dropped by migration 0008): a
NOTIFY makes its transaction take, at commit, a lock every notifying commit
queues on, which held back about 30% of the append rate at 8 connections.
SQLite has neither: other processes' appends wait for the readers' own polls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg2
from sqlalchemy import make_url

log = logging.getLogger(__name__)

#: Each probe connection's `application_name` in `pg_stat_activity`.
APPLICATION_NAME = "vidledger-wake"
#: How often a listener looks: what another process appends wakes within this.
POLL_SECONDS = 0.1
PROBE = (
    "SELECT (SELECT max(position) FROM video_status_events),"
    " pg_snapshot_xmin(pg_current_snapshot())::text"
)


def _dsn(url: str) -> str:
    u = make_url(url)
    parts = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "dbname": u.database,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def _probe(conn: Any) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(PROBE)
        return tuple(cur.fetchone())


def start_listener(
    url: str, on_notify: Callable[[str], None], stop: threading.Event
) -> threading.Thread | None:
    """Call `on_notify("")` whenever the probe moves, until `stop` is set.

    Reconnects after a lost connection, waking once so that nothing is
    missed meanwhile.
    """

    def run() -> None:
        while not stop.is_set():
            try:
                conn = psycopg2.connect(_dsn(url), application_name=APPLICATION_NAME)
            except psycopg2.OperationalError as exc:
                log.warning("wake probe: cannot connect: %s", str(exc).strip())
                stop.wait(2.0)
                continue
            try:
                conn.autocommit = True
                last = _probe(conn)
                on_notify("")  # anything appended before that probe, while we were not looking
                while not stop.wait(POLL_SECONDS):
                    seen = _probe(conn)
                    if seen != last:
                        on_notify("")
                    last = seen
            except (psycopg2.Error, OSError) as exc:
                log.warning("wake probe: connection lost: %s", str(exc).strip())
                stop.wait(1.0)
            finally:
                conn.close()

    thread = threading.Thread(target=run, name="pg-wake", daemon=True)
    thread.start()
    return thread
