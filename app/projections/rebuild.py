"""Online (blue/green) rebuild of the status projection from the log.

1. Replay a complete prefix of the log into a shadow table, in batches,
   each batch its own short transaction (long writes would hold the
   PostgreSQL feed back).
2. Catch up from the feed cursor just past that prefix, again and again,
   until little is left.
3. In one short transaction: hold appends back, apply the last events,
   swap the shadow in, record the new version. Readers are never refused;
   at most the swap delays writers.

An interrupted rebuild leaves the live table untouched; the next run drops
the half-built shadow and starts again.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import Connection, MetaData, Select, Table, func, insert, select, update
from sqlalchemy.schema import CreateTable

from app.db.backend import LockTimeout, backend_of
from app.db.copy_text import COPY_ESCAPES, COPY_NULL, copy_bool, copy_json
from app.db.engine import Database, open_database
from app.db.tables import STATUS_TABLE, events, projection_state, status_table
from app.events import store
from app.events.store import EVENT_COLUMNS, to_event
from app.events.types import CURRENT_SCHEMA, Json, RecordedEvent
from app.events.upcasters import upcast
from app.lifecycle import EventType, Status
from app.progress import Progress, counted
from app.projections import status
from app.projections.projector import ensure_state
from app.projections.status import StatusRow, apply, apply_into, row_from_mapping

log = logging.getLogger(__name__)

SHADOW = STATUS_TABLE + "_next"
#: Stop catching up once a pass finds fewer events than this...
CATCH_UP_CLOSE_ENOUGH = 500
#: Below this many events a parallel replay stays in one process.
PARALLEL_MIN_EVENTS = 100_000
#: How long the final swap waits for its locks before backing off, and how often.
SWAP_LOCK_TIMEOUT_S = 2.0
SWAP_ATTEMPTS = 5
#: ...or after this many passes, so a write rate the replay cannot outrun
#: still ends (the final, blocking pass then applies a little more).
CATCH_UP_MAX_PASSES = 5


@dataclass
class RebuildReport:
    events: int = 0
    rows: int = 0
    catch_up_passes: int = 0
    #: How long appends were held back for the final catch-up and the swap.
    swap_seconds: float = 0.0
    seconds: float = 0.0


def _shadow(conn: Connection) -> Table:
    return status_table(
        SHADOW, MetaData(), suffix_constraints=backend_of(conn).constraint_names_are_global
    )


def _set_state(db: Database, state: str) -> None:
    with db.write() as conn:
        conn.execute(
            update(projection_state)
            .where(projection_state.c.name == status.NAME)
            .values(state=state)
        )


def _fold_stream(rows: Iterable[Any]) -> Iterator[StatusRow]:
    """One folded row per image, from log rows ordered by (img_name, version)."""
    for _, group in groupby(rows, key=lambda r: r.img_name):
        row: StatusRow | None = None
        for r in group:
            row = apply(row, to_event(r))
        assert row is not None
        yield row


def _replay_prefix(
    db: Database, shadow: Table, batch: int, progress: Progress | None, report: RebuildReport
) -> str:
    """Fill the shadow from a complete prefix of the log; return the cursor after it."""
    with db.snapshot() as conn:
        prefix, cursor = backend_of(conn).feed_start_after_snapshot(conn, events)
        query = (
            select(*EVENT_COLUMNS)
            .where(prefix)
            .order_by(backend_of(conn).bytewise(events.c.img_name), events.c.version)
        )
        rows = conn.execution_options(yield_per=batch).execute(query)
        pending: list[dict[str, Any]] = []
        for row in _fold_stream(_counting(rows, report, progress)):
            pending.append(row.as_values())
            if len(pending) >= batch:
                _insert(db, shadow, pending)
                report.rows += len(pending)
                pending = []
        if pending:
            _insert(db, shadow, pending)
            report.rows += len(pending)
    return cursor


@dataclass(slots=True)
class _Event:
    """The fields the fold reads, and nothing else: one of these per log row."""

    img_name: str
    version: int
    position: int
    event_type: EventType
    to_status: Status
    data: Json
    recorded_at: datetime


_EVENT_TYPES = {t.value: t for t in EventType}
_STATUSES = {s.value: s for s in Status}


class _CopyFolder:
    """Folds COPY rows ordered by (img_name, version) and writes finished rows
    to the shadow with COPY, `batch` at a time, each batch its own transaction."""

    def __init__(
        self,
        db: Database,
        shadow: Table,
        batch: int,
        progress: Progress | None,
        report: RebuildReport,
    ) -> None:
        self.db, self.shadow, self.batch = db, shadow, batch
        self.progress, self.report = progress, report
        self.row: StatusRow | None = None
        self.stamps: dict[int, tuple[datetime, str]] = {}
        self.event = _Event("", 0, 0, EventType.REQUESTED, Status.NONE, {}, datetime.now(UTC))
        self.done: list[str] = []
        self.counted = 0

    def on_row(self, f: list[str | None]) -> None:
        img_name, version, kind, schema, to_status, data, at, position = f
        assert img_name is not None and data is not None and at is not None
        row = self.row
        if row is None or row.img_name != img_name:
            self._finish_row()
            row = self.row = StatusRow(img_name=img_name)
        # One event object, refilled per row: the fold reads it and lets go.
        ev = self.event
        ev.img_name = img_name
        ev.version = int(version)  # type: ignore[arg-type]  # NOT NULL columns
        ev.position = int(position)  # type: ignore[arg-type]
        ev.event_type = event_type = _EVENT_TYPES[kind]  # type: ignore[index]
        ev.to_status = _STATUSES[to_status]  # type: ignore[index]
        payload = orjson.loads(data)
        if int(schema) != CURRENT_SCHEMA[event_type]:  # type: ignore[arg-type]
            payload = upcast(event_type, int(schema), payload)  # type: ignore[arg-type]
        ev.data = payload
        ev.recorded_at = when = datetime.fromisoformat(at)
        self.stamps[id(when)] = (when, at)
        apply_into(row, ev)
        self.counted += 1
        if self.counted == 10_000:
            self._count()

    def _count(self) -> None:
        self.report.events += self.counted
        if self.progress is not None:
            self.progress(self.counted)
        self.counted = 0

    def _finish_row(self) -> None:
        if self.row is not None:
            self.done.append(_copy_line(self.row, self.stamps))
            self.stamps.clear()
            if len(self.done) >= self.batch:
                self._flush()

    def _flush(self) -> None:
        with self.db.write() as conn:
            backend_of(conn).copy_in(conn, self.shadow, status.COLUMNS, self.done)
        self.report.rows += len(self.done)
        self.done = []

    def close(self) -> None:
        self._finish_row()
        self.row = None
        if self.done:
            self._flush()
        self._count()


_N = COPY_NULL
_ESC = COPY_ESCAPES


def _copy_line(r: StatusRow, stamps: dict[int, tuple[datetime, str]]) -> str:
    """A status row in COPY's text format, columns in `status.COLUMNS` order.

    Written out by hand, with the None checks inline, because a rebuild
    formats every row and a generic per-value formatter was most of the
    replay's cost. Timestamps that came out of the log as text go back as
    that text (`stamps`: id -> (the datetime, kept alive so the id stays
    its own, its text)). `test_rebuild_equals_the_incremental_projection`
    compares the result with the inline projection column by column.
    """

    def t(v: datetime | None) -> str:
        if v is None:
            return _N
        known = stamps.get(id(v))
        return known[1] if known is not None else v.isoformat()

    return "\t".join(
        (
            r.img_name.translate(_ESC),
            "t" if r.has_video else "f",
            r.video_status.value,
            _N if r.video_filename is None else r.video_filename.translate(_ESC),
            _N if r.source_type is None else r.source_type,
            _N if r.prompt is None else r.prompt.translate(_ESC),
            copy_json(r.params),
            str(r.generation),
            str(r.attempts),
            _N if r.error_code is None else r.error_code.translate(_ESC),
            _N if r.error_message is None else r.error_message.translate(_ESC),
            copy_bool(r.error_retryable),
            "t" if r.cancel_requested else "f",
            t(r.not_before),
            t(r.requested_at),
            t(r.started_at),
            t(r.completed_at),
            t(r.updated_at),
            str(r.version),
            str(r.last_position),
            _N if r.queued_seconds is None else str(r.queued_seconds),
            _N if r.generation_seconds is None else str(r.generation_seconds),
        )
    )


def _partition_query(
    conn: Connection, cursor: str, lower: str | None, upper: str | None
) -> Select[Any]:
    """The prefix's events of images in [lower, upper), grouped by image."""
    c = events.c
    query = select(
        c.img_name,
        c.version,
        c.event_type,
        c.schema_version,
        c.to_status,
        c.data,
        c.recorded_at,
        c.position,
    ).where(backend_of(conn).feed_up_to(events, cursor))
    if lower is not None:
        query = query.where(c.img_name >= lower)
    if upper is not None:
        query = query.where(c.img_name < upper)
    # Any order that keeps each image's events together, in version order,
    # will do: the (img_name, version) index gives one cheaply.
    return query.order_by(c.img_name, c.version)


def _replay_range(
    db: Database,
    shadow: Table,
    cursor: str,
    lower: str | None,
    upper: str | None,
    batch: int,
    progress: Progress | None,
    report: RebuildReport,
) -> None:
    folder = _CopyFolder(db, shadow, batch, progress, report)
    with db.snapshot() as conn:
        query = _partition_query(conn, cursor, lower, upper)
        backend_of(conn).copy_out(conn, query, folder.on_row, escaped=frozenset({0, 5}))
    folder.close()


def _replay_partition(
    url: str, cursor: str, lower: str | None, upper: str | None, batch: int, queue: Any
) -> None:
    """A child process's share of a parallel replay; reports through `queue`."""
    db = open_database(url, pool_size=2)
    try:
        with db.read() as conn:
            shadow = _shadow(conn)
        report = RebuildReport()
        _replay_range(
            db, shadow, cursor, lower, upper, batch, lambda n: queue.put(("events", n)), report
        )
        queue.put(("rows", report.rows))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        db.dispose()


def _split_points(conn: Connection, cursor: str, parts: int) -> list[str]:
    """img_names that cut the prefix into `parts` runs of about equal events."""
    c = events.c
    total = conn.execute(
        select(func.count()).select_from(events).where(backend_of(conn).feed_up_to(events, cursor))
    ).scalar_one()
    points: list[str] = []
    if total < PARALLEL_MIN_EVENTS:
        return points  # starting processes would cost more than it saves
    for k in range(1, parts):
        point = conn.execute(
            select(c.img_name)
            .where(backend_of(conn).feed_up_to(events, cursor))
            .order_by(c.img_name, c.version)
            .offset(total * k // parts)
            .limit(1)
        ).scalar()
        if point is not None and (not points or point > points[-1]):
            points.append(point)
    return points


def _replay_prefix_by_copy(
    db: Database,
    shadow: Table,
    batch: int,
    progress: Progress | None,
    report: RebuildReport,
    parallel: int,
) -> str:
    """`_replay_prefix` for PostgreSQL: the log streamed out and the rows
    streamed in with COPY, folded in between with no per-event SQL at all.

    With `parallel` > 1 the images are cut into that many ranges of img_name,
    each replayed by its own process (the fold is CPU-bound Python). The
    prefix is `tx_id < xmin`, complete whatever snapshot reads it, so the
    processes need not share one.
    """
    with db.snapshot() as conn:
        _, cursor = backend_of(conn).feed_start_after_snapshot(conn, events)
        points = _split_points(conn, cursor, parallel) if parallel > 1 else []
    if not points:
        _replay_range(db, shadow, cursor, None, None, batch, progress, report)
        return cursor
    bounds = list(zip([None, *points], [*points, None], strict=True))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    url = db.writer.url.render_as_string(hide_password=False)
    procs = [
        context.Process(
            target=_replay_partition, args=(url, cursor, lo, hi, batch, queue), daemon=True
        )
        for lo, hi in bounds
    ]
    for p in procs:
        p.start()
    finished = 0
    try:
        while finished < len(procs):
            kind, value = queue.get(timeout=600)
            if kind == "events":
                report.events += value
                if progress is not None:
                    progress(value)
            elif kind == "rows":
                report.rows += value
                finished += 1
            else:
                raise RuntimeError(f"a rebuild process failed: {value}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return cursor


def _counting(
    rows: Iterable[Any], report: RebuildReport, progress: Progress | None
) -> Iterator[Any]:
    def advance(n: int) -> None:
        report.events += n
        if progress is not None:
            progress(n)

    return counted(rows, advance)


def _insert(db: Database, shadow: Table, values: list[dict[str, Any]]) -> None:
    with db.write() as conn:  # one short transaction per batch
        conn.execute(insert(shadow), values)


def _apply_to_shadow(conn: Connection, shadow: Table, got: list[RecordedEvent]) -> None:
    """Fold `got` (feed order) into the shadow rows of the images they touch."""
    names = sorted({e.img_name for e in got})
    cols = [shadow.c[c] for c in status.COLUMNS]
    current = {
        r["img_name"]: row_from_mapping(r)
        for r in conn.execute(
            select(*cols).where(backend_of(conn).in_list(shadow.c.img_name, names))
        ).mappings()
    }
    for ev in got:
        row = current.get(ev.img_name)
        have = row.version if row is not None else 0
        if ev.version <= have:
            continue  # already in the prefix
        if ev.version != have + 1:
            raise RuntimeError(
                f"rebuild saw {ev.img_name!r} v{ev.version} after v{have}; run it again"
            )
        current[ev.img_name] = apply(row, ev)
    for name in names:
        backend_of(conn).upsert(conn, shadow, current[name].as_values(), key="img_name")


def _catch_up(
    db: Database,
    shadow: Table,
    cursor: str,
    batch: int,
    progress: Progress | None,
    report: RebuildReport,
) -> str:
    """Apply what was appended since `cursor` until a pass finds little.

    Each pass reads at most what was there when it started, so a pass ends
    even while writers keep appending.
    """
    while True:
        report.catch_up_passes += 1
        seen = 0
        with db.read() as conn:
            budget = store.count_after(conn, cursor)
        while seen < budget:
            with db.read() as conn:
                page = store.read_all(conn, after=cursor, limit=min(batch, budget - seen))
            if not page.events:
                break
            with db.write() as conn:
                _apply_to_shadow(conn, shadow, page.events)
            seen += len(page.events)
            report.events += len(page.events)
            if progress is not None:
                progress(len(page.events))
            assert page.cursor is not None
            cursor = page.cursor
        if seen < CATCH_UP_CLOSE_ENOUGH or report.catch_up_passes >= CATCH_UP_MAX_PASSES:
            return cursor


def _final_swap(db: Database, shadow: Table, cursor: str, report: RebuildReport) -> None:
    started = time.perf_counter()
    with db.write() as conn:
        backend_of(conn).lock_for_swap(conn, STATUS_TABLE, events, SWAP_LOCK_TIMEOUT_S)
        while True:
            query = (
                select(*EVENT_COLUMNS)
                .where(backend_of(conn).feed_visible(events, cursor, in_flight_possible=False))
                .order_by(*backend_of(conn).feed_order(events))
                .limit(5000)
            )
            got = [to_event(r) for r in conn.execute(query)]
            if not got:
                break
            _apply_to_shadow(conn, shadow, got)
            report.events += len(got)
            cursor = store.cursor_of(conn, got[-1])
        backend_of(conn).swap_in(conn, shadow, STATUS_TABLE)
        last = conn.execute(
            select(events.c.position).order_by(events.c.position.desc()).limit(1)
        ).scalar()
        conn.execute(
            update(projection_state)
            .where(projection_state.c.name == status.NAME)
            .values(
                version=status.VERSION,
                state="ok",
                last_position=last or 0,
                built_at=datetime.now(UTC),
            )
        )
    report.swap_seconds = time.perf_counter() - started


def rebuild(
    db: Database, *, batch: int = 5000, progress: Progress | None = None, parallel: int = 1
) -> RebuildReport:
    """Rebuild the status table from the log, online. See the module docstring.

    `progress(n)` is called as events are replayed. `parallel` > 1 replays
    a PostgreSQL log in that many processes. Raises whatever stopped it;
    the live table is then untouched.
    """
    report = RebuildReport()
    started = time.perf_counter()
    with db.write() as conn:
        ensure_state(conn)
        shadow = _shadow(conn)
        shadow.drop(conn, checkfirst=True)  # a half-built one from an interrupted run
        # The secondary indexes come after the bulk replay: building them
        # once is cheaper than maintaining them row by row.
        conn.execute(CreateTable(shadow))
    previous = _stored_state(db)
    _set_state(db, "rebuilding")
    try:
        with db.read() as conn:
            bulk = backend_of(conn).supports_copy
        if bulk:
            cursor = _replay_prefix_by_copy(db, shadow, batch, progress, report, parallel)
        else:
            cursor = _replay_prefix(db, shadow, batch, progress, report)
        with db.write() as conn:
            for index in shadow.indexes:
                index.create(conn)
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            cursor = _catch_up(db, shadow, cursor, batch, progress, report)
            try:
                _final_swap(db, shadow, cursor, report)
                break
            except LockTimeout:
                if attempt == SWAP_ATTEMPTS:
                    raise
                log.warning("rebuild: a long transaction holds the status table; trying again")
    except BaseException:
        _set_state(db, previous)
        with db.write() as conn:
            shadow.drop(conn, checkfirst=True)
        raise
    report.seconds = time.perf_counter() - started
    log.info(
        "rebuilt %s",
        status.NAME,
        extra={
            "events": report.events,
            "rows": report.rows,
            "swap_s": round(report.swap_seconds, 4),
        },
    )
    return report


def _stored_state(db: Database) -> str:
    with db.read() as conn:
        state = conn.execute(
            select(projection_state.c.state).where(projection_state.c.name == status.NAME)
        ).scalar()
    return "ok" if state in (None, "rebuilding") else str(state)


def stale(db: Database) -> bool:
    """Does the stored projection version differ from the code's?"""
    with db.read() as conn:
        version = conn.execute(
            select(projection_state.c.version).where(projection_state.c.name == status.NAME)
        ).scalar()
    return version != status.VERSION
