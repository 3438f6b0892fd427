"""Read use cases: status (now or as of then), history, listings, the feed, stats.

Reads run on the reader engine in autocommit. A status read is one indexed
single-row query; a batch is one query whatever its size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select

from app.db.backend import Backend, backend_of
from app.db.engine import Database
from app.db.statement import Statement
from app.db.tables import events, image_status, leases
from app.events import store
from app.events.store import FeedFilter
from app.events.types import Json, RecordedEvent
from app.keys import Access, CheckedRead
from app.lifecycle import Status
from app.projections import status as status_projection
from app.projections.state import ProjectionInfo, describe
from app.projections.status import StatusRow, fold, row_from_values
from app.service.cursors import bad_cursor, decode, encode
from app.service.results import FeedEvent, Page, VideoState

_STATUS_QUERY = select(
    *[image_status.c[name] for name in status_projection.COLUMNS],
    leases.c.progress,
).select_from(image_status.outerjoin(leases, leases.c.img_name == image_status.c.img_name))
#: Built once: building the statement per read cost more than executing it.
_ONE_STATUS = CheckedRead.of(
    _STATUS_QUERY.where(image_status.c.img_name == bindparam("img_name")), lock=(image_status,)
)


_WIDTH = len(status_projection.COLUMNS)


@functools.lru_cache(maxsize=4)
def _batch_statement(backend: Backend) -> Statement:
    """The status of a list of names, bound as one value: one statement text
    for any length, run on the driver's cursor (a batch of 1,000 spent more
    in SQLAlchemy's result machinery than in the query)."""
    # Not prepared: a generic plan cannot hash a parameter's array, and over
    # a small table it compares every row with every name.
    return Statement(_STATUS_QUERY.where(backend.in_bound(image_status.c.img_name, "names")))


def _state(row: Sequence[Any]) -> VideoState:
    """A row of `_STATUS_QUERY` (the projection's columns, then progress)."""
    return VideoState(row=row_from_values(row[:_WIDTH]), progress=row[_WIDTH])


def _never_seen(img_name: str) -> VideoState:
    return VideoState(row=StatusRow(img_name=img_name))


MAX_INT = 2**31 - 1


def _check(conn: Connection, access: Access | None) -> None:
    if access is not None:
        access.check(conn)


class VideoQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def status(self, img_name: str, access: Access | None = None) -> VideoState:
        """The current VideoStatus; an image never seen answers `none`, version 0.

        With `access`, the caller is checked in the same statement (raises
        `Unauthorized` or `Forbidden` before anything is answered): the
        hottest read is one round trip.
        """
        with self.db.read(replica=True) as conn:
            found = _ONE_STATUS.run(conn, access, {"img_name": img_name})
        return _state(found) if found is not None else _never_seen(img_name)

    def status_as_of(
        self,
        img_name: str,
        *,
        version: int | None = None,
        at: datetime | None = None,
        access: Access | None = None,
    ) -> VideoState:
        """The status as it was at stream `version` or at time `at`, folded from the log."""
        with self.db.read() as conn:
            _check(conn, access)
            stream = store.read_stream(conn, img_name, until_version=version, until_time=at)
        return VideoState(row=fold(stream, img_name))

    def batch(self, img_names: list[str], access: Access | None = None) -> list[VideoState]:
        """One VideoStatus per name, in the order asked, in one query."""
        wanted = list(dict.fromkeys(img_names))
        with self.db.read(replica=True) as conn:
            _check(conn, access)
            rows = _batch_statement(backend_of(conn)).run(conn, {"names": wanted})
        found = {r[0]: _state(r) for r in rows}
        return [found.get(name) or _never_seen(name) for name in img_names]

    def list_videos(
        self,
        *,
        status: Status | None,
        source_type: str | None,
        limit: int,
        cursor: str | None,
        name_prefix: str | None = None,
    ) -> Page[VideoState]:
        """Images newest `updated_at` first, with a keyset cursor."""
        query = _STATUS_QUERY
        if name_prefix is not None:
            # substr, not LIKE: LIKE ignores ASCII case on SQLite, and a range
            # on img_name depends on PostgreSQL's collation. Both count characters.
            query = query.where(
                func.substr(image_status.c.img_name, 1, len(name_prefix)) == name_prefix
            )
        if status is not None:
            query = query.where(image_status.c.video_status == status.value)
        if source_type is not None:
            query = query.where(image_status.c.source_type == source_type)
        if cursor is not None:
            after = decode(cursor)
            try:
                at, ident = datetime.fromisoformat(after[0]), int(after[1])
            except (IndexError, TypeError, ValueError) as exc:
                raise bad_cursor() from exc
            if at.tzinfo is None or not 0 <= ident <= 2**63 - 1:
                raise bad_cursor()
            query = query.where(
                or_(
                    image_status.c.updated_at < at,
                    and_(image_status.c.updated_at == at, image_status.c.id < ident),
                )
            )
        query = query.order_by(image_status.c.updated_at.desc(), image_status.c.id.desc())
        with self.db.read(replica=True) as conn:
            rows = conn.execute(
                query.add_columns(image_status.c.id.label("_id")).limit(limit + 1)
            ).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]._mapping
            next_cursor = encode([last["updated_at"].isoformat(), last["_id"]])
        return Page(items=[_state(r) for r in rows], next_cursor=next_cursor)

    def history(self, img_name: str, *, limit: int, cursor: str | None) -> Page[RecordedEvent]:
        """Transitions of one image, oldest first."""
        after = 0
        if cursor is not None:
            try:
                after = int(decode(cursor)[0])
            except (IndexError, TypeError, ValueError) as exc:
                raise bad_cursor() from exc
            if not 0 <= after <= MAX_INT:
                raise bad_cursor()
        with self.db.read() as conn:
            got = store.read_stream(conn, img_name, after_version=after, limit=limit + 1)
        more = len(got) > limit
        got = got[:limit]
        next_cursor = encode([got[-1].version]) if more else None
        return Page(items=got, next_cursor=next_cursor)

    def events(
        self, *, after: str | None, limit: int, filters: FeedFilter, tail: bool = False
    ) -> Page[FeedEvent]:
        """The global feed. `next_cursor` is where to continue (also at the end).

        `tail` reads the last `limit` events instead (in feed order), so a
        reader can start near now rather than at the beginning of the log.
        """
        with self.db.read() as conn:
            if tail:
                page = store.read_tail(conn, limit=limit, filters=filters)
            else:
                try:
                    page = store.read_all(conn, after=after, limit=limit, filters=filters)
                except ValueError as exc:
                    raise bad_cursor("after") from exc
            items = [FeedEvent(e, store.cursor_of(conn, e)) for e in page.events]
        return Page(items=items, next_cursor=page.cursor)

    def stats(self, now: datetime) -> Json:
        """Counts by status, by source type and by generator; the queue (depth,
        due, oldest pending age) in all and per generator; failures per
        generator by error code."""
        c = image_status.c
        with self.db.read() as conn:
            by_status: dict[str, int] = dict(
                conn.execute(select(c.video_status, func.count()).group_by(c.video_status)).all()
            )
            by_source: dict[str, dict[str, int]] = {}
            for source, st, n in conn.execute(
                select(c.source_type, c.video_status, func.count()).group_by(
                    c.source_type, c.video_status
                )
            ):
                by_source.setdefault(source or "unknown", {})[st] = n
            by_generator: dict[str, dict[str, int]] = {}
            for generator, st, n in conn.execute(
                select(c.generator, c.video_status, func.count())
                .where(c.generator.is_not(None))
                .group_by(c.generator, c.video_status)
            ):
                by_generator.setdefault(generator, {})[st] = n
            queues: dict[str, Json] = {}
            for generator, depth, due_now, oldest_one in conn.execute(
                select(
                    c.generator,
                    func.count(),
                    func.count().filter(c.not_before <= now),
                    func.min(c.requested_at),
                )
                .where(c.video_status == Status.PENDING.value)
                .group_by(c.generator)
            ):
                queues[generator or "unknown"] = {
                    "depth": int(depth),
                    "due": int(due_now or 0),
                    "oldest_pending_age_seconds": _age(now, oldest_one),
                }
            failures: dict[str, dict[str, int]] = {}
            for generator, code, n in conn.execute(
                select(c.generator, c.error_code, func.count())
                .where(c.video_status == Status.FAILED.value)
                .group_by(c.generator, c.error_code)
            ):
                failures.setdefault(generator or "unknown", {})[code or "unknown"] = n
            due = sum(q["due"] for q in queues.values())
            ages = [q["oldest_pending_age_seconds"] for q in queues.values()]
            oldest_age = max((a for a in ages if a is not None), default=None)
            processing = by_status.get(Status.PROCESSING.value, 0)
        counts = {s.value: int(by_status.get(s.value, 0)) for s in Status if s is not Status.NONE}
        counts["none"] = int(by_status.get("none", 0))
        return {
            "by_status": counts,
            "by_source_type": by_source,
            "by_generator": by_generator,
            "total": sum(counts.values()),
            "queue_depth": counts["pending"],
            "due": due,
            "processing": processing,
            "oldest_pending_age_seconds": oldest_age,
            "queue_by_generator": queues,
            "failures_by_generator": failures,
        }

    def feed_lag(self, now: datetime) -> tuple[int, float]:
        """Events committed but not yet visible to feed readers, and the age
        in seconds of the oldest of them (0 when none is held back)."""
        with self.db.read() as conn:
            hidden = backend_of(conn).feed_hidden(events)
            if hidden is None:
                return 0, 0.0
            count, oldest = conn.execute(
                select(func.count(), func.min(events.c.recorded_at)).where(hidden)
            ).one()
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        return int(count), max(age, 0.0)

    def event_count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    def projections(self) -> list[ProjectionInfo]:
        with self.db.read() as conn:
            return describe(conn)


def _age(now: datetime, since: datetime | None) -> float | None:
    return round((now - since).total_seconds(), 3) if since is not None else None
