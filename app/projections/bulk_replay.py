"""The bulk replay of a rebuild, where the backend can COPY: the log streamed
out and the rows streamed in, folded in between with no per-event SQL.

The fold is CPU-bound Python, so a large log is cut into ranges of
img_name, each replayed by its own process.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, get_type_hints

import orjson
from sqlalchemy import Connection, Select, Table, func, select

from app.db.backend import backend_of
from app.db.copy_text import COPY_NULL, copy_bool, copy_json, escape
from app.db.engine import Database, open_database
from app.db.tables import events
from app.events.types import CURRENT_SCHEMA, Json
from app.events.upcasters import upcast
from app.lifecycle import EventType, Status
from app.progress import Progress
from app.projections import replay_process, status
from app.projections.shadow import RebuildReport, shadow_table
from app.projections.status import StatusRow, apply_into

#: Below this many events a parallel replay stays in one process.
PARALLEL_MIN_EVENTS = 100_000


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


#: How a status column goes into COPY's text format. Plain numbers, not an
#: Enum: the line formatter compares them for every column of every row, and
#: an Enum member's lookup showed there.
_TEXT, _FLAG, _NUMBER, _STATUS, _JSON, _STAMP = range(6)


def _column_kinds() -> list[int]:
    """Each status column's kind, in `status.COLUMNS` order, from the type of
    the `StatusRow` field it writes (a new type fails here, at import)."""
    hints = get_type_hints(StatusRow)
    by_type: dict[Any, int] = {
        str: _TEXT,
        str | None: _TEXT,
        bool: _FLAG,
        bool | None: _FLAG,
        int: _NUMBER,
        float | None: _NUMBER,
        Status: _STATUS,
        Json | None: _JSON,
        datetime | None: _STAMP,
    }
    return [by_type[hints[name]] for name in status.COLUMNS]


_KINDS = _column_kinds()
_FIELDS = attrgetter(*status.COLUMNS)


def _copy_line(r: StatusRow, stamps: dict[int, tuple[datetime, str]]) -> str:
    """A status row in COPY's text format, columns in `status.COLUMNS` order.

    `stamps` maps id -> (a datetime the fold took from the log, kept alive so
    that its id stays its own; its text as the log gave it), so that a
    timestamp goes back as the very text it came in as.

    One loop with the kinds inline, most common first: a formatter call per
    column was a quarter slower, and a rebuild writes a line per image.
    """
    out: list[str] = []
    add = out.append
    for kind, v in zip(_KINDS, _FIELDS(r), strict=True):
        if v is None:
            add(COPY_NULL)
        elif kind == _TEXT:
            add(escape(v))
        elif kind == _NUMBER:
            add(str(v))
        elif kind == _STAMP:
            known = stamps.get(id(v))
            add(known[1] if known is not None else v.isoformat())
        elif kind == _FLAG:
            add(copy_bool(v))
        elif kind == _STATUS:
            add(v.value)
        else:
            add(copy_json(v))
    return "\t".join(out)


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


def replay_task(task: Json, progress: Progress) -> int:
    """Replay one range of a parallel rebuild, as a replay process is given it
    (see `replay_process`); return the rows written."""
    db = open_database(task["url"], pool_size=2)
    try:
        with db.read() as conn:
            shadow = shadow_table(conn)
        report = RebuildReport()
        _replay_range(
            db,
            shadow,
            task["cursor"],
            task["lower"],
            task["upper"],
            task["batch"],
            progress,
            report,
        )
        return report.rows
    finally:
        db.dispose()


def _read_messages(
    index: int, proc: subprocess.Popen[str], messages: queue.Queue[tuple[int, Json | None]]
) -> None:
    """Pass a replay process's messages on, tagged with its index, then None."""
    assert proc.stdout is not None
    with proc.stdout as output:
        for line in output:
            messages.put((index, replay_process.parse(line)))
    messages.put((index, None))


def _prefix_size(conn: Connection, cursor: str) -> int:
    """How many events the prefix up to `cursor` holds."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(events)
            .where(backend_of(conn).feed_up_to(events, cursor))
        ).scalar_one()
    )


def _split_points(conn: Connection, cursor: str, total: int, parts: int) -> list[str]:
    """img_names that cut the prefix (`total` events) into `parts` runs of
    about equal events."""
    c = events.c
    points: list[str] = []
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


def replay_prefix(
    db: Database,
    shadow: Table,
    batch: int,
    progress: Progress | None,
    report: RebuildReport,
    parallel: int,
) -> str:
    """Fill the shadow from a complete prefix of the log; return the cursor after it.

    With `parallel` > 1 the images are cut into that many ranges of img_name,
    each replayed by its own process (the fold is CPU-bound Python). The
    prefix is `tx_id < xmin`, complete whatever snapshot reads it, so the
    processes need not share one.
    """
    with db.snapshot() as conn:
        _, cursor = backend_of(conn).feed_start_after_snapshot(conn, events)
        total = _prefix_size(conn, cursor) if parallel > 1 else 0
    if total < PARALLEL_MIN_EVENTS:  # starting processes would cost more than it saves
        _replay_range(db, shadow, cursor, None, None, batch, progress, report)
        return cursor
    # The processes start first: they import while the ranges are cut.
    procs = [replay_process.start() for _ in range(parallel)]
    messages: queue.Queue[tuple[int, Json | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_read_messages, args=(i, proc, messages), daemon=True)
        for i, proc in enumerate(procs)
    ]
    for reader in readers:
        reader.start()
    finished: set[int] = set()
    try:
        with db.snapshot() as conn:
            points = _split_points(conn, cursor, total, parallel)
        bounds = list(zip([None, *points], [*points, None], strict=True))
        url = db.writer.url.render_as_string(hide_password=False)
        for proc, (lower, upper) in zip(procs, bounds, strict=False):
            task = {"url": url, "batch": batch, "cursor": cursor, "lower": lower, "upper": upper}
            replay_process.give(proc, task)
        for proc in procs[len(bounds) :]:
            replay_process.give(proc, None)
        while len(finished) < len(procs):
            i, message = messages.get(timeout=600)
            if message is None:  # its output ended
                if i in finished:
                    continue
                code = procs[i].wait(timeout=30)
                raise RuntimeError(f"a rebuild process ended with exit code {code}")
            if "events" in message:
                report.events += message["events"]
                if progress is not None:
                    progress(message["events"])
            elif "rows" in message:
                report.rows += message["rows"]
                finished.add(i)
            else:
                raise RuntimeError(f"a rebuild process failed: {message['error']}")
    finally:
        failed = len(finished) < len(procs)
        for proc in procs:
            replay_process.stop(proc, kill=failed)
        for reader in readers:
            reader.join(timeout=5)  # at the end of its process's output
    return cursor
