"""Which database errors mean "unavailable, try again" (503) and which are
the statement's own fault: decided by each backend's `is_unavailable`."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db.postgres import PostgresBackend
from app.db.sqlite import SqliteBackend

is_unavailable = PostgresBackend().is_unavailable


class PgError(Exception):
    """Stands in for a psycopg2 error: what matters is its `pgcode`."""

    def __init__(self, message: str, pgcode: str | None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("message", "pgcode", "unavailable"),
    [
        ('connection to server at "127.0.0.1", port 5432 failed: Connection refused', None, True),
        ("FATAL:  the database system is shutting down", None, True),
        ("FATAL:  the database system is starting up", None, True),
        ("server closed the connection unexpectedly", None, True),
        ("terminating connection due to administrator command", "57P01", True),
        ("the database system is in recovery mode", "57P03", True),
        ("sorry, too many clients already", "53300", True),
        ("connection failure", "08006", True),
        ("could not serialize access due to concurrent update", "40001", False),
        ("canceling statement due to lock timeout", "55P03", False),
        ("canceling statement due to statement timeout", "57014", False),
    ],
)
def test_postgresql_errors(message: str, pgcode: str | None, unavailable: bool) -> None:
    exc = OperationalError("SELECT 1", {}, PgError(message, pgcode))
    assert is_unavailable(exc) is unavailable


def test_a_constraint_violation_is_not_an_outage() -> None:
    assert not is_unavailable(IntegrityError("INSERT", {}, PgError("duplicate key", "23505")))


def test_sqlite_errors_are_left_to_the_caller() -> None:
    locked = OperationalError("BEGIN", {}, sqlite3.OperationalError("locked"))
    assert not SqliteBackend().is_unavailable(locked)


@pytest.mark.parametrize("backend", [PostgresBackend(), SqliteBackend()], ids=["pg", "sqlite"])
def test_a_lost_connection_is_an_outage_whatever_the_driver_says(
    backend: PostgresBackend | SqliteBackend,
) -> None:
    exc = OperationalError("SELECT 1", {}, sqlite3.OperationalError("gone"))
    exc.connection_invalidated = True
    assert backend.is_unavailable(exc)
