"""Export and import of the event log, and the move from SQLite to PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from app.api.idempotency import idempotency
from app.api.views import status_body, transition_body
from app.cli import main
from app.db.engine import Database, open_database
from app.db.tables import events
from app.events import store
from app.events.types import DEFAULT_PARAMS
from app.export_format import TransferFileError, check_file
from app.projections.rebuild import rebuild
from app.projections.verify import verify
from app.service import Actor, Policy, VideoService
from app.service.queries import VideoQueries
from app.transfer import DivergedLog, export_events, import_events
from tests.conftest import upgrade_and_build

USER = Actor("frontend", correlation_id="req-7")
REAPER_TICK = 3600


class Clock:
    """The service's clock, an hour ahead of the database's, so that fresh
    requests are due; moved by hand to make retries due or leases expire."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _service(db: Database, clock: Clock) -> VideoService:
    policy = Policy(
        max_attempts=3, lease_seconds=600, backoff_base_seconds=1, backoff_cap_seconds=5
    )
    return VideoService(db, policy, clock=clock, jitter=lambda: 0.5)


class Driver:
    """Drives one image at a time through a history, through the service."""

    def __init__(self, db: Database) -> None:
        self.clock = Clock()
        self.svc = _service(db, self.clock)

    def request(self, name: str, *, regenerate: bool = False, n: int = 0) -> None:
        body = {"prompt": f"slow zoom {n}", "params": {"fps": 12 + n % 3}}
        idem = idempotency(f"key-{name}-{n}-{regenerate}", "request", body, 202)
        self.svc.request_video(
            name,
            "role_card" if n % 2 else "scene",
            USER,
            prompt=body["prompt"] if n % 3 else None,
            params=body["params"] if n % 4 else None,
            regenerate=regenerate,
            idem=idem if n % 2 else None,
        )

    def claim(self, name: str) -> str:
        task = self.svc.claim_task(f"gpu-{len(name) % 3}")
        assert task is not None and task.img_name == name, (name, task)
        return task.lease_token

    def complete(self, name: str, generation: int = 1) -> None:
        token = self.claim(name)
        self.svc.complete_task(
            name, token, f"{name}.g{generation}.mp4", metadata={"frames": 72, "seconds": 3.0}
        )

    def fail(self, name: str, *, retryable: bool) -> None:
        token = self.claim(name)
        self.svc.fail_task(name, token, "gen.oom", "out of GPU memory — ünïcode", retryable)
        self.clock.advance(10)  # the retry, if any, is due


def _histories(d: Driver, name: str, kind: str, n: int) -> None:
    """One image's history of `kind`, finished before the next image starts."""
    svc = d.svc
    d.request(name, n=n)
    if kind == "completed":
        d.complete(name)
    elif kind == "retry_then_complete":
        d.fail(name, retryable=True)
        d.complete(name)
    elif kind == "fatal":
        d.fail(name, retryable=False)
    elif kind == "exhausted":
        for _ in range(3):
            d.fail(name, retryable=True)
    elif kind == "cancel_pending":
        svc.cancel_video(name, USER, reason="changed my mind")
    elif kind == "cancel_processing":
        token = d.claim(name)
        svc.cancel_video(name, Actor("admin", correlation_id="c-1"), reason="wrong image")
        svc.acknowledge_cancel(name, token)
    elif kind == "retry_after_failure":
        d.fail(name, retryable=False)
        svc.retry_video(name, USER, reason="try again")
        d.complete(name)
    elif kind == "deleted":
        d.complete(name)
        svc.delete_video(name, USER, reason="unwanted")
    elif kind == "regenerated":
        d.complete(name)
        d.request(name, regenerate=True, n=n + 1)
        d.complete(name, generation=2)
    elif kind == "deleted_then_requested":
        d.fail(name, retryable=False)
        svc.delete_video(name, USER)
        d.request(name, n=n + 2)
        d.complete(name)
    elif kind == "released":
        token = d.claim(name)
        svc.release_task(name, token)
        d.complete(name)
    elif kind == "reaped":
        d.claim(name)
        d.clock.advance(REAPER_TICK)  # the lease runs out
        assert svc.reap_expired_leases() == 1
        d.clock.advance(10)
        d.complete(name)
    else:
        raise AssertionError(kind)


KINDS = [
    "completed",
    "retry_then_complete",
    "fatal",
    "exhausted",
    "cancel_pending",
    "cancel_processing",
    "retry_after_failure",
    "deleted",
    "regenerated",
    "deleted_then_requested",
    "released",
    "reaped",
]


def _insert_v1_request(db: Database, name: str, when: datetime) -> None:
    """A VideoRequested as an older vidledger wrote it: schema 1, no params."""
    with db.write() as conn:
        conn.execute(
            insert(events).values(
                event_id=uuid.uuid4(),
                img_name=name,
                version=1,
                event_type="VideoRequested",
                schema_version=1,
                from_status="none",
                to_status="pending",
                data={"source_type": "scene", "prompt": "legacy", "regenerate": False},
                actor="legacy-app",
                reason=None,
                correlation_id=None,
                idempotency_key=None,
                recorded_at=when,
            )
        )


def build_mixed_log(db: Database) -> list[str]:
    """A few dozen images with a realistic mix of histories; returns their names."""
    d = Driver(db)
    names: list[str] = []
    for rnd in range(3):
        for i, kind in enumerate(KINDS):
            name = f"{kind}-{rnd}.png"
            _histories(d, name, kind, n=rnd * len(KINDS) + i)
            names.append(name)
    # Left unfinished: processing, waiting for a retry, waiting for a worker.
    for i in range(3):
        name = f"processing-{i}.png"
        d.request(name, n=i)
        d.claim(name)
        names.append(name)
    for i in range(2):
        name = f"retry-scheduled-{i}.png"
        d.request(name, n=i)
        token = d.claim(name)
        d.svc.fail_task(name, token, "gen.timeout", "took too long", True)
        names.append(name)
    for i in range(3):
        name = f"pending-{i}.png"
        d.request(name, n=i)
        names.append(name)
    for i in range(2):
        name = f"legacy-{i}.png"
        _insert_v1_request(db, name, datetime(2024, 5, 1, 12, 0, i, 123456, tzinfo=UTC))
        names.append(name)
    rebuild(db)  # the raw legacy rows reach the projection
    return names


def _open(url: str) -> Database:
    return open_database(url, pool_size=4)


@dataclass(frozen=True)
class Source:
    url: str
    export: Path
    names: list[str]
    events: int


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A SQLite deployment with mixed histories, and its export."""
    folder = tmp_path_factory.mktemp("source")
    url = f"sqlite:///{folder / 'source.db'}"
    upgrade_and_build(url)
    db = _open(url)
    try:
        names = build_mixed_log(db)
        path = folder / "events.jsonl"
        written = export_events(db, path)
        assert verify(db).ok
    finally:
        db.dispose()
    yield Source(url=url, export=path, names=names, events=written)


def _fresh_postgres(factory: object) -> str:
    url: str = factory()  # type: ignore[operator]
    upgrade_and_build(url)
    return url


def _history(db: Database, name: str) -> list[tuple[Any, ...]]:
    with db.read() as conn:
        return [
            (
                e.event_id,
                e.version,
                e.event_type,
                e.schema_version,
                e.from_status,
                e.to_status,
                e.data,
                e.actor,
                e.reason,
                e.correlation_id,
                e.idempotency_key,
                e.recorded_at,
            )
            for e in store.read_stream(conn, name)
        ]


def _event_lines(path: Path) -> list[dict[str, Any]]:
    """The file's events without the source's positions."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "position"} for line in lines[1:]]


def _count(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


# --- the acceptance test --------------------------------------------------------


@pytest.mark.postgres
def test_round_trip_sqlite_to_postgresql(
    mixed_source: Source, pg_database_factory: object, tmp_path: Path
) -> None:
    """Export from SQLite, import into PostgreSQL: verify is clean and the status
    and history of every image are equal, timestamps to the microsecond."""
    assert len(mixed_source.names) >= 40
    assert mixed_source.events > 150
    target_url = _fresh_postgres(pg_database_factory)
    source, target = _open(mixed_source.url), _open(target_url)
    try:
        with source.read() as conn:
            feed = [str(e.event_id) for e in store.iter_all(conn, batch=50)]
        exported = [line["event_id"] for line in _event_lines(mixed_source.export)]
        assert exported == feed  # global order

        seen: list[int] = []
        report = import_events(target, mixed_source.export, progress=seen.append, batch=100)
        assert (report.imported, report.skipped) == (mixed_source.events, 0)
        assert sum(seen) == mixed_source.events
        rebuild(target)
        checked = verify(target)
        assert checked.ok, checked.differences
        assert checked.checked == len(mixed_source.names)
        assert checked.events == mixed_source.events

        src, dst = VideoQueries(source), VideoQueries(target)
        for name in mixed_source.names:
            assert status_body(dst.status(name)) == status_body(src.status(name)), name
            assert _history(target, name) == _history(source, name), name
        statuses = {src.status(n).row.video_status.value for n in mixed_source.names}
        assert statuses == {"none", "pending", "processing", "completed", "failed", "cancelled"}

        # The target's feed holds the same events in the same order: its own
        # export matches the source's line for line (positions aside).
        again = tmp_path / "again.jsonl"
        assert export_events(target, again) == mixed_source.events
        assert _event_lines(again) == _event_lines(mixed_source.export)
    finally:
        source.dispose()
        target.dispose()


# --- import on both databases ---------------------------------------------------


@pytest.fixture
def small_source(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'small-source.db'}"
    upgrade_and_build(url)
    db = _open(url)
    yield db
    db.dispose()


def _request(db: Database, *names: str) -> None:
    svc = _service(db, Clock())
    for name in names:
        svc.request_video(name, "scene", USER, prompt=f"zoom on {name}")


def test_importing_the_same_file_again_imports_nothing(
    mixed_source: Source, database: Database
) -> None:
    first = import_events(database, mixed_source.export, batch=64)
    assert (first.imported, first.skipped) == (mixed_source.events, 0)
    second = import_events(database, mixed_source.export, batch=64)
    assert (second.imported, second.skipped) == (0, mixed_source.events)
    assert _count(database) == mixed_source.events
    rebuild(database)
    assert verify(database).ok


def test_a_later_export_imports_only_what_is_new(
    small_source: Database, database: Database, tmp_path: Path
) -> None:
    _request(small_source, "a.png", "b.png")
    export_events(small_source, tmp_path / "early.jsonl")
    _request(small_source, "c.png")
    export_events(small_source, tmp_path / "late.jsonl")

    assert import_events(database, tmp_path / "early.jsonl").imported == 2
    report = import_events(database, tmp_path / "late.jsonl")
    assert (report.imported, report.skipped) == (1, 2)
    rebuild(database)
    assert verify(database).ok
    assert VideoQueries(database).status("c.png").row.prompt == "zoom on c.png"


def test_a_diverged_log_is_refused_and_its_batch_is_not_written(
    small_source: Database, database: Database, tmp_path: Path
) -> None:
    _request(small_source, "a.png", "b.png", "x.png")
    path = tmp_path / "events.jsonl"
    export_events(small_source, path)
    _request(database, "x.png")  # the target wrote its own x.png version 1

    with pytest.raises(DivergedLog) as refused:
        import_events(database, path)
    detail = refused.value.detail
    assert "'x.png' version 1" in detail
    assert "diverged" in detail
    assert "lines 2-4" in detail
    assert _count(database) == 1  # a.png and b.png, in the same batch, were not written

    # With a batch per event, the earlier lines stay imported and it says so.
    with pytest.raises(DivergedLog) as refused:
        import_events(database, path, batch=1)
    assert refused.value.extra["imported"] == 2
    assert "line 4" in refused.value.detail
    assert _count(database) == 3


def test_v1_requests_keep_their_schema_and_are_read_upcast(
    small_source: Database, database: Database, tmp_path: Path
) -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
    _insert_v1_request(small_source, "old.png", when)
    path = tmp_path / "events.jsonl"
    export_events(small_source, path)
    [line] = _event_lines(path)
    assert line["schema_version"] == 1 and "params" not in line["data"]

    import_events(database, path)
    rebuild(database)
    assert verify(database).ok
    with database.read() as conn:
        raw = conn.execute(select(events.c.schema_version, events.c.data)).one()
    assert raw.schema_version == 1
    assert "params" not in raw.data  # the stored row is as it was written
    [event] = VideoQueries(database).history("old.png", limit=10, cursor=None).items
    item = transition_body(event)
    assert item["schema_version"] == 1
    assert item["data"]["params"] == DEFAULT_PARAMS
    assert item["occurred_at"] == "2024-05-01T12:00:00.654321Z"
    assert VideoQueries(database).status("old.png").row.video_status == "pending"


# --- files that are not exports -------------------------------------------------


def _valid_lines(small_source: Database, tmp_path: Path) -> list[str]:
    _request(small_source, "a.png", "b.png")
    svc = _service(small_source, Clock())
    svc.cancel_video("a.png", USER)
    path = tmp_path / "good.jsonl"
    export_events(small_source, path)
    # header, a.png v1, b.png v1, a.png v2
    return path.read_text(encoding="utf-8").splitlines()


def _edit(line: str, **changes: Any) -> str:
    obj = json.loads(line)
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


_DROP = object()

Mutation = Callable[[list[str]], list[str]]


def _replace(index: int, make: Callable[[str], str]) -> Mutation:
    def mutate(lines: list[str]) -> list[str]:
        return [make(line) if i == index else line for i, line in enumerate(lines)]

    return mutate


BAD_FILES: dict[str, tuple[Mutation, int, str]] = {
    "not json": (_replace(2, lambda line: line[:-5]), 3, "not valid JSON"),
    "not an object": (_replace(1, lambda _: "[1, 2]"), 2, "not a JSON object"),
    "missing field": (_replace(1, lambda line: _edit(line, actor=_DROP)), 2, "actor"),
    "unknown field": (_replace(1, lambda line: _edit(line, colour="red")), 2, "colour"),
    "bad uuid": (_replace(2, lambda line: _edit(line, event_id="nope")), 3, "UUID"),
    "naive time": (
        _replace(2, lambda line: _edit(line, recorded_at="2024-01-01T00:00:00")),
        3,
        "time zone",
    ),
    "unknown event": (
        _replace(1, lambda line: _edit(line, event_type="VideoExploded")),
        2,
        "VideoExploded",
    ),
    "future schema": (
        _replace(1, lambda line: _edit(line, schema_version=9)),
        2,
        "newer than this code",
    ),
    "version gap": (_replace(3, lambda line: _edit(line, version=3)), 4, "after version 1"),
    "no header": (lambda lines: lines[1:], 1, "not a vidledger-events export"),
    "other format": (
        _replace(0, lambda line: _edit(line, format="csv")),
        1,
        "not a vidledger-events export",
    ),
    "newer format": (_replace(0, lambda line: _edit(line, version=2)), 1, "format version 2"),
    "truncated": (lambda lines: lines[:-1], 4, "header promises 3 events"),
    "blank line": (lambda lines: [*lines[:2], "", *lines[2:]], 3, "empty line"),
    "empty file": (lambda lines: [], 1, "empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_malformed_file_names_its_line_and_writes_nothing(
    case: str, small_source: Database, database: Database, tmp_path: Path
) -> None:
    mutate, line, words = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    lines = mutate(_valid_lines(small_source, tmp_path))
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    with pytest.raises(TransferFileError) as refused:
        import_events(database, path)
    assert f"line {line}:" in refused.value.detail
    assert words in refused.value.detail
    assert _count(database) == 0


def test_a_file_that_is_not_there(database: Database, tmp_path: Path) -> None:
    with pytest.raises(TransferFileError, match="cannot read"):
        import_events(database, tmp_path / "nowhere.jsonl")


def test_a_valid_file_passes_the_check(small_source: Database, tmp_path: Path) -> None:
    lines = _valid_lines(small_source, tmp_path)
    counted: list[int] = []
    header = check_file(tmp_path / "good.jsonl", progress=counted.append)
    assert header.events == len(lines) - 1 == sum(counted)
    assert header.source == "sqlite"


# --- the commands ---------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No stray VIDLEDGER_* variable or .env file; logging restored after `main`."""
    for name in list(os.environ):
        if name.startswith("VIDLEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("clean_env")
def test_the_commands_move_a_deployment(
    small_source: Database,
    db_url: str,
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _request(small_source, "a.png", "b.png", "c.png")
    driver = Driver(small_source)
    driver.svc.cancel_video("b.png", USER)
    driver.claim("a.png")  # left processing
    source_url = str(small_source.writer.url)
    path = tmp_path / "moved.jsonl"

    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", source_url)
    assert main(["events", "export", str(path)]) == 0
    shown = capsys.readouterr()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 5
    assert json.loads(lines[0])["events"] == 5
    assert "exported 5 events" in shown.err
    assert "1 image(s) processing" in shown.err

    assert main(["events", "export", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == lines[1:]

    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", db_url)
    assert main(["events", "import", str(path)]) == 0
    shown = capsys.readouterr()
    assert "imported 5 events; skipped 0" in shown.err
    assert "no drift" in shown.err
    src, dst = VideoQueries(small_source), VideoQueries(database)
    for name in ("a.png", "b.png", "c.png"):
        assert status_body(dst.status(name)) == status_body(src.status(name))

    assert main(["events", "import", str(path)]) == 0
    shown = capsys.readouterr()
    assert "imported 0 events; skipped 5" in shown.err
    assert "no drift" in shown.err


@pytest.mark.usefixtures("clean_env")
def test_the_import_command_explains_a_bad_file(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    header = {"format": "vidledger-events", "version": 1, "events": 1}
    path.write_text(json.dumps(header) + "\n{not json\n", encoding="utf-8")
    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", db_url)
    assert main(["events", "import", str(path)]) == 1
    shown = capsys.readouterr().err
    assert "line 2" in shown
    assert "Traceback" not in shown

    assert main(["events", "import", str(tmp_path / "missing.jsonl")]) == 1
    shown = capsys.readouterr().err
    assert "cannot read" in shown
    assert "Traceback" not in shown
