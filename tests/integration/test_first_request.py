"""A request for a new image in one statement (`projector.append_first`)
against the checked way (lock, decide, append): the same event, the same
row, the same answer, and the same kept answer, whatever the request.

SQL repeats two rules here, each held to Python's by a property test:
- "the image has no row" is the state machine's `none` at version 0, the
  one status a request is allowed from whatever it asks;
- the kept answer's times are written by SQL as `app.timestamps.rfc3339`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import bindparam, select

from app.db.engine import Database
from app.db.postgres.backend import PostgresBackend
from app.db.tables import idempotency_keys
from app.db.types import UTCDateTime
from app.events import store
from app.events import types as ev
from app.lifecycle import EventType, Status
from app.projections import projector
from app.projections.status import StatusRow
from app.service import Actor, Idempotency, Replayed, VideoService, VideoState
from app.service.base import GeneratorNames, Policy
from app.timestamps import rfc3339

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]

ME = Actor("prop", correlation_id="corr-1")
GENERATORS = GeneratorNames(names=("kenburns", "other"), default="kenburns")
#: The fields the database gives (or that name the image): not compared.
EVENT_OWN = {"position", "recorded_at", "tx_id", "event_id", "img_name", "idempotency_key"}
ROW_OWN = {"img_name", "not_before", "requested_at", "updated_at", "last_position"}

requests = st.fixed_dictionaries(
    {
        "source_type": st.sampled_from(["scene", "role_card", "upload"]),
        # Text the API lets in (`schemas.storable`): no NUL, no lone surrogate.
        "prompt": st.none()
        | st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40
        ),
        "params": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "duration_seconds": st.floats(0.5, 10),
                "fps": st.integers(1, 60),
                "max_size": st.integers(64, 4096),
            },
        ),
        "generator": st.none() | st.sampled_from(GENERATORS.names),
        "keyed": st.booleans(),
    }
)


def _answer(state: VideoState) -> tuple[int, Any]:
    """An answer with the times and the prompt at its top level, as the API's is."""
    row = state.row
    times = {n: rfc3339(getattr(row, n)) for n in ("requested_at", "updated_at", "not_before")}
    return 202, {"status": row.video_status.value, "prompt": row.prompt, **times}


def _idem(key: str) -> Idempotency:
    return Idempotency(key=key, fingerprint="f" * 64, answer=_answer)


def _service(database: Database) -> VideoService:
    return VideoService(database, Policy(generators=GENERATORS))


def _events(database: Database, img: str) -> list[Any]:
    with database.read() as conn:
        return list(store.read_stream(conn, img))


def _kept(database: Database, img: str) -> Any:
    c = idempotency_keys.c
    with database.read() as conn:
        return conn.execute(select(c.response).where(c.img_name == img)).scalar_one()


def _no_fast_path(*_: object, **__: object) -> None:
    return None


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_one_statement_and_the_checked_way_agree(
    database: Database, monkeypatch: pytest.MonkeyPatch, request: dict[str, Any]
) -> None:
    svc = _service(database)
    run = uuid.uuid4().hex[:8]
    keyed = request.pop("keyed")
    outcomes: dict[str, Any] = {}
    for way in ("one", "checked"):
        img = f"{run}-{way}.png"
        with monkeypatch.context() as m:
            if way == "checked":
                m.setattr(projector, "append_first", _no_fast_path)
            idem = _idem(f"k-{way}") if keyed else None
            outcomes[way] = svc.request_video(img, actor=ME, idem=idem, **request)
    one, checked = outcomes["one"], outcomes["checked"]
    assert isinstance(one, VideoState) and isinstance(checked, VideoState)

    (ev1,), (ev2,) = _events(database, f"{run}-one.png"), _events(database, f"{run}-checked.png")
    assert ev1.event_type is EventType.REQUESTED and ev1.version == 1
    same = {f: getattr(ev1, f) for f in ev1.__dataclass_fields__ if f not in EVENT_OWN}
    assert same == {f: getattr(ev2, f) for f in same}
    assert ev1.idempotency_key == ("k-one" if keyed else None)

    def row_of(state: VideoState) -> dict[str, Any]:
        return {f: getattr(state.row, f) for f in StatusRow.__dataclass_fields__}

    r1, r2 = row_of(one), row_of(checked)
    assert {k: v for k, v in r1.items() if k not in ROW_OWN} == {
        k: v for k, v in r2.items() if k not in ROW_OWN
    }
    # The database's clock, once: the event's time is the row's.
    assert r1["requested_at"] == r1["updated_at"] == r1["not_before"] == ev1.recorded_at
    assert r1["last_position"] == ev1.position
    # What the command answered is what is stored, and what a rebuild folds.
    assert database_row(database, f"{run}-one.png") == r1
    if keyed:
        kept = _kept(database, f"{run}-one.png")
        assert kept == _answer(one)[1], "the kept answer is the answer, times included"
        again = svc.request_video(f"{run}-one.png", actor=ME, idem=_idem("k-one"), **request)
        assert again == Replayed(status=202, body=kept)


def database_row(database: Database, img: str) -> dict[str, Any]:
    with database.read() as conn:
        row = projector.load(conn, img)
    assert row is not None
    return {f: getattr(row, f) for f in StatusRow.__dataclass_fields__}


@pytest.mark.parametrize(
    "status",
    [
        Status.PENDING,
        Status.PROCESSING,
        Status.COMPLETED,
        Status.FAILED,
        Status.CANCELLED,
        "deleted",
    ],
)
def test_one_statement_writes_nothing_for_an_image_with_a_row(
    database: Database, status: Status | str
) -> None:
    """Whatever the image's status, even `none` after a delete, the one
    statement writes nothing and the checked way decides as it always has."""
    svc = _service(database)
    img = f"{uuid.uuid4().hex[:8]}.png"
    svc.request_video(img, "scene", ME)
    if status is not Status.PENDING:
        task = svc.claim_task("w1")
        assert task is not None and task.img_name == img
        if status is Status.COMPLETED or status == "deleted":
            svc.complete_task(img, task.lease_token, "v.mp4")
        elif status is Status.FAILED:
            svc.fail_task(img, task.lease_token, "boom", "broken", retryable=False)
        elif status is Status.CANCELLED:
            svc.cancel_video(img, ME)
            svc.acknowledge_cancel(img, task.lease_token)
        if status == "deleted":
            svc.delete_video(img, ME)
    before = _events(database, img)
    with database.write_alone() as conn:
        new = svc._event(None, img, EventType.REQUESTED, _requested(), ME)
        written = projector.append_first(conn, img, new, ME.admitted() or _fail())
    assert written is None
    assert _events(database, img) == before


def _requested() -> Any:
    return ev.requested("scene", None, {}, False, "kenburns")


def _fail() -> Any:
    raise AssertionError("a named actor is always admitted")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    at=st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2999, 12, 31),
        timezones=st.just(UTC),
    )
)
def test_sql_writes_a_time_as_rfc3339_does(database: Database, at: datetime) -> None:
    with database.read() as conn:
        written = conn.execute(select(PostgresBackend.rfc3339_text(_at(at)))).scalar_one()
    assert written == rfc3339(at)


def _at(at: datetime) -> Any:
    return bindparam("at", at, type_=UTCDateTime())


def test_whole_seconds_have_no_fraction(database: Database) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with database.read() as conn:
        for t in (at, at + timedelta(microseconds=1), at + timedelta(microseconds=500_000)):
            assert conn.execute(select(PostgresBackend.rfc3339_text(_at(t)))).scalar_one() == (
                rfc3339(t)
            )
