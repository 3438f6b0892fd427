"""A race that is lost is decided again, and one that stays lost is a 503, never a 500."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db.engine import open_database
from app.errors import ConcurrencyConflict
from app.projections import projector
from tests.conftest import TABLES


@pytest.mark.postgres
def test_a_deadlock_leaves_the_write_scope_as_a_concurrency_conflict(pg_session_url: str) -> None:
    db = open_database(pg_session_url, pool_size=2)
    with db.write() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS race_pair (id int PRIMARY KEY)"))
        conn.execute(text("TRUNCATE race_pair"))
        conn.execute(text("INSERT INTO race_pair VALUES (1), (2)"))
    both_hold_one = threading.Barrier(2, timeout=10)
    outcomes: list[BaseException | None] = [None, None]

    def lock_both(index: int, first: int, second: int) -> None:
        try:
            with db.write() as conn:
                conn.execute(text("SELECT 1 FROM race_pair WHERE id = :i FOR UPDATE"), {"i": first})
                both_hold_one.wait()
                conn.execute(
                    text("SELECT 1 FROM race_pair WHERE id = :i FOR UPDATE"), {"i": second}
                )
        except BaseException as exc:  # the test reads it below
            outcomes[index] = exc

    threads = [
        threading.Thread(target=lock_both, args=(0, 1, 2)),
        threading.Thread(target=lock_both, args=(1, 2, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with db.write() as conn:
        conn.execute(text("DROP TABLE race_pair"))
    db.dispose()
    # PostgreSQL breaks the cycle by aborting exactly one of the two.
    losers = [o for o in outcomes if o is not None]
    assert len(losers) == 1, outcomes
    assert isinstance(losers[0], ConcurrencyConflict), repr(losers[0])


def test_a_race_lost_every_time_answers_503_with_retry_after_and_records_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append: Callable[..., object] = projector.append
    real_first: Callable[..., object] = projector.append_first
    tries = [0]

    def always_beaten(*args: object, **kwargs: object) -> object:
        tries[0] += 1
        raise ConcurrencyConflict("another writer got there first")

    monkeypatch.setattr(projector, "append", always_beaten)
    # A first request's one statement loses too: the checked way is tried next.
    monkeypatch.setattr(projector, "append_first", always_beaten)
    r = client.post("/v1/videos", json={"img_name": "busy.png", "source_type": "scene"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"]
    assert r.json()["code"] == "unavailable"
    assert tries[0] > 2, "the command was decided again before giving up"

    monkeypatch.setattr(projector, "append", real_append)
    monkeypatch.setattr(projector, "append_first", real_first)
    status = client.get("/v1/videos/busy.png").json()
    assert status["video_status"] == "none" and status["version"] == 0
    assert client.get("/v1/events", params={"img_name": "busy.png"}).json()["items"] == []
