"""LISTEN/NOTIFY on PostgreSQL: wake sleepers when the log grows.

A trigger (migration 0002) sends `NOTIFY vidledger_events, '<to_status>'`
for every appended event; the notification is delivered when the append
commits. SQLite has no such thing: in-process listeners are woken by the
service's `on_append` hook, and other processes poll.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable

import psycopg2
from sqlalchemy import make_url

log = logging.getLogger(__name__)

CHANNEL = "vidledger_events"


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


def start_listener(
    url: str, on_notify: Callable[[str], None], stop: threading.Event
) -> threading.Thread | None:
    """Call `on_notify(payload)` for each notification until `stop` is set.

    Reconnects after a lost connection, waking once so that nothing is
    missed meanwhile.
    """

    def run() -> None:
        while not stop.is_set():
            try:
                conn = psycopg2.connect(_dsn(url))
            except psycopg2.OperationalError as exc:
                log.warning("LISTEN connection failed: %s", str(exc).strip())
                stop.wait(2.0)
                continue
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                on_notify("")  # anything appended while we were not listening
                while not stop.is_set():
                    if select.select([conn], [], [], 1.0)[0]:
                        conn.poll()
                        while conn.notifies:
                            on_notify(conn.notifies.pop(0).payload)
            except (psycopg2.Error, OSError) as exc:
                log.warning("LISTEN connection lost: %s", str(exc).strip())
                stop.wait(1.0)
            finally:
                conn.close()

    thread = threading.Thread(target=run, name="pg-listen", daemon=True)
    thread.start()
    return thread
