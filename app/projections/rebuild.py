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
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, Index, Table, insert, select, update
from sqlalchemy.schema import CreateTable

from app.db.backend import LockTimeout, backend_of
from app.db.engine import Database
from app.db.tables import STATUS_TABLE, events, projection_state
from app.events import store
from app.events.store import EVENT_COLUMNS, to_event
from app.events.types import RecordedEvent
from app.progress import Progress, counted
from app.projections import bulk_replay, status
from app.projections.projector import ensure_state
from app.projections.shadow import RebuildReport, shadow_table

__all__ = ["RebuildReport", "rebuild", "stale"]
from app.projections.status import StatusRow, apply, row_from_mapping

log = logging.getLogger(__name__)

#: Stop catching up once a pass finds fewer events than this...
CATCH_UP_CLOSE_ENOUGH = 500
#: How long the final swap waits for its locks before backing off, and how often.
SWAP_LOCK_TIMEOUT_S = 2.0
SWAP_ATTEMPTS = 5
#: ...or after this many passes, so a write rate the replay cannot outrun
#: still ends (the final, blocking pass then applies a little more).
CATCH_UP_MAX_PASSES = 5


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


def _create_indexes(db: Database, shadow: Table, parallel: int) -> None:
    """The shadow's secondary indexes, `parallel` at a time, each on its own
    connection (PostgreSQL builds one with one core: the others would idle)."""

    def create(index: Index) -> None:
        with db.write() as conn:
            index.create(conn)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for done in [pool.submit(create, index) for index in shadow.indexes]:
            done.result()  # the first failure, raised here


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
        shadow = shadow_table(conn)
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
            cursor = bulk_replay.replay_prefix(db, shadow, batch, progress, report, parallel)
        else:
            cursor = _replay_prefix(db, shadow, batch, progress, report)
        _create_indexes(db, shadow, parallel if bulk else 1)
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
