"""A throwaway PostgreSQL database for a benchmark run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

ADMIN_DSN = os.environ.get(
    "VIDLEDGER_BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def _admin(sql: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def scratch_database() -> Iterator[str]:
    """Create a database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"vidledger_bench_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
