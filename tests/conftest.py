"""Shared fixtures: each storage test runs on SQLite and on PostgreSQL.

SQLite gets a fresh file per test, copied from one migrated template.
PostgreSQL gets a database of its own for the session (created here,
dropped afterwards), truncated between tests. With `CI` set, PostgreSQL
must be reachable: its tests fail rather than skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from app import bootstrap
from app.api import create_app
from app.config import Settings
from app.db.engine import Database, open_database
from app.db.tables import metadata, projection_state
from app.projections import status
from app.service import Policy, VideoService
from app.service.queries import VideoQueries

PG_ADMIN_DSN = os.environ.get(
    "VIDLEDGER_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
IN_CI = bool(os.environ.get("CI"))

#: Emptied before each test on the session's PostgreSQL database: every table
#: but the projection's bookkeeping (reset separately).
TABLES = ", ".join(t.name for t in metadata.sorted_tables if t is not projection_state)


def _pg_reachable() -> bool:
    try:
        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


PG_UP = _pg_reachable()


def _admin_exec(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def pg_url_for(dbname: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbname}"


def upgrade_and_build(url: str) -> None:
    """What `vidledger db upgrade` does: migrate, then build stale projections."""
    bootstrap.upgrade(url)


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[object]:
    """Creates throwaway PostgreSQL databases; drops them all at the end."""
    created: list[str] = []

    def make() -> str:
        if not PG_UP:
            if IN_CI:
                pytest.fail("CI is set but PostgreSQL at 127.0.0.1:5432 is not reachable")
            pytest.skip("PostgreSQL is not reachable")
        name = f"vidledger_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        _admin_exec(f'CREATE DATABASE "{name}"')
        created.append(name)
        return pg_url_for(name)

    yield make
    for name in created:
        _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_session_url(pg_database_factory: object) -> str:
    url: str = pg_database_factory()  # type: ignore[operator]
    upgrade_and_build(url)
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_and_build(f"sqlite:///{path}")
    return path


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "vidledger.db"
        shutil.copy(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_session_url")
    db = open_database(url, pool_size=1)
    with db.write() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
        conn.execute(
            update(projection_state).values(version=status.VERSION, state="ok", last_position=0)
        )
    db.dispose()
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = open_database(db_url, pool_size=20)
    yield db
    db.dispose()


@pytest.fixture
def policy() -> Policy:
    return Policy(
        max_attempts=3, lease_seconds=30, backoff_base_seconds=0.01, backoff_cap_seconds=0.05
    )


@pytest.fixture
def service(database: Database, policy: Policy) -> VideoService:
    return VideoService(database, policy)


@pytest.fixture
def queries(database: Database) -> VideoQueries:
    return VideoQueries(database)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        images_dir=tmp_path / "images",
        videos_dir=tmp_path / "videos",
        backoff_base_seconds=0.01,
        backoff_cap_seconds=0.05,
    )


@pytest.fixture
def client(settings: Settings, database: Database) -> Iterator[TestClient]:
    app = create_app(settings, db=database)
    with TestClient(app) as c:
        yield c
