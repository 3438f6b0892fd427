"""The inline projector: writes the folded row in the append's transaction.

Takes a connection and never commits: a failed projection rolls its
append back with it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, literal_column, select, true

from app.db import idempotency
from app.db.backend import Backend, backend_of
from app.db.statement import Statement
from app.db.tables import events, idempotency_keys, image_status, projection_state
from app.db.unit_of_work import UnitOfWork
from app.events import store
from app.events.types import NewEvent, RecordedEvent
from app.projections import status
from app.projections.status import StatusRow, apply, row_from_values

_ROW_COLUMNS = [image_status.c[name] for name in status.COLUMNS]
_LOAD = Statement(select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name")))


@dataclass(frozen=True, slots=True)
class Current:
    """An image's projected row as a command reads it, before it decides."""

    img_name: str
    #: None before the image's first event.
    row: StatusRow | None
    #: The database clock read once the row was locked, where the database
    #: can fuse an append with its projection (`Backend.locked_clock`):
    #: the event this command appends is recorded at this time. None elsewhere.
    clock: datetime | None
    #: The answer kept under the command's Idempotency-Key, as the read saw
    #: it (None without a key, or none kept).
    remembered: idempotency.Remembered | None = None

    @property
    def version(self) -> int:
        return self.row.version if self.row is not None else 0


def load(conn: Connection, img_name: str) -> StatusRow | None:
    """The projected row of one image, or None if it has no events."""
    found = _LOAD.run(conn, {"img_name": img_name})
    return row_from_values(found[0]) if found else None


def load_current(conn: Connection, img_name: str, idempotency_key: str | None = None) -> Current:
    """Lock the image's status row until commit and read it, with the answer
    kept under `idempotency_key` if one is given (one round trip).

    This is the lock order (README, "Design notes"): every command that
    writes anything about an image calls this first, before it touches the
    log, the idempotency keys or the leases. Commands on one image then
    queue on this row lock instead of meeting in two orders (a row lock and
    the log's UNIQUE(img_name, version) entry), which deadlocked. An image
    without a row has nothing to lock: two first writers meet at the log's
    unique index, and the loser gets `ConcurrencyConflict`.

    On SQLite the write transaction (BEGIN IMMEDIATE) already excludes
    every other writer, and FOR UPDATE compiles to nothing.
    """
    backend = backend_of(conn)
    keyed = idempotency_key is not None
    params: dict[str, str | None] = {"img_name": img_name}
    if keyed:
        params["idem_key"] = idempotency_key
    statement, clocked = _load_statement(backend, keyed)
    ((*values,),) = statement.run(conn, params)
    # The outer joins leave a row's columns NULL where it has none.
    row_values, values = values[: len(_ROW_COLUMNS)], values[len(_ROW_COLUMNS) :]
    row = row_from_values(row_values) if row_values[0] is not None else None
    clock = values.pop(0) if clocked else None
    remembered = idempotency.Remembered.of(values) if keyed else None
    return Current(img_name, row, clock, remembered)


@functools.lru_cache(maxsize=8)
def _load_statement(backend: Backend, keyed: bool) -> tuple[Statement, bool]:
    """The locked row, outer-joined so that one row comes back for an image
    without a row too; with the database clock (where there is one to read:
    the second value says) and, if `keyed`, the answer kept under the key.

    The clock is read after the lock was granted (the outer SELECT's
    target list is computed from the joined row), so an event appended by a
    command that queued behind another on this row is recorded after it:
    `recorded_at` follows the stream's versions.
    """
    locked = select(*_ROW_COLUMNS).where(image_status.c.img_name == bindparam("img_name"))
    locked = locked.with_for_update()
    clock = backend.locked_clock()
    # LATERAL is what PostgreSQL needs to lock inside the join; SQLite has none.
    locked_row = locked.lateral("locked") if clock is not None else locked.subquery("locked")
    found = select(literal_column("1").label("one")).subquery("tx").outerjoin(locked_row, true())
    columns: list[Any] = list(locked_row.c)
    if clock is not None:
        columns.append(clock.label("clock"))
    if keyed:
        kept = idempotency_keys.c
        on_key = and_(kept.img_name == bindparam("img_name"), kept.key == bindparam("idem_key"))
        found = found.outerjoin(idempotency_keys, on_key)
        columns.extend(idempotency.COLUMNS)
    read = select(*columns).select_from(found)
    return Statement(read, prepare=True, lock=(image_status,)), clock is not None


#: What a command keeps under its Idempotency-Key, made from the row it appends.
KeepOf = Callable[[StatusRow], idempotency.Keep]


def append(
    uow: UnitOfWork, current: Current, new: NewEvent, keep: KeepOf | None = None
) -> StatusRow:
    """Append `new` to the stream of `current.img_name`, at `current`'s version,
    and project it; the recorded event joins `uow.appended`. Returns the new row.
    With `keep`, the answer it makes of the new row is kept under its key too
    (`idempotency.keep`'s rule: raises `ConcurrencyConflict` where a live one is).

    Where the backend fuses an insert with an upsert (and `current` has the
    clock the event will be recorded at), all of it is one statement: the
    row is folded first, from the event as it will be recorded, and the
    statement fills in the one thing only the database knows, the event's
    position (`last_position`). Otherwise the event is appended, then its
    folded row upserted, then the answer kept. Either way the fold is
    `status.apply`. Raises `ConcurrencyConflict` like `store.append`.
    """
    fused = _append_projected_statement(uow.backend, keep is not None)
    if current.clock is not None and fused is not None:
        pending = store.pending(current.img_name, current.version + 1, new, current.clock)
        row = apply(current.row, pending)
        kept = keep(row) if keep is not None else None
        event = _append_projected(uow, fused, pending, row, kept)
        row.last_position = event.position
    else:
        (event,) = store.append(uow.conn, current.img_name, current.version, [new])
        row = project(uow.conn, current.row, [event])
        if keep is not None:
            idempotency.keep(uow.backend, uow.conn, keep(row))
    uow.appended.append(event)
    return row


#: How the fused statement names the status row's parameters, apart from the event's.
_ROW_PREFIX = "row_"


def _append_projected(
    uow: UnitOfWork,
    fused: Statement,
    event: RecordedEvent,
    row: StatusRow,
    kept: idempotency.Keep | None,
) -> RecordedEvent:
    """Append `event` (made by `store.pending`) and upsert its folded `row`
    (and keep `kept`), in one statement. The row's `last_position` is stored
    as the position the database gives the event."""
    params = store.event_values(event.img_name, event.version, event)
    params["recorded_at"] = event.recorded_at
    for name, value in row.as_values().items():
        params[_ROW_PREFIX + name] = value
    if kept is not None:
        params.update(kept.params())
    with store.conflict_on_version(uow.backend, event.img_name, event.version - 1):
        ((position, recorded_at, tx_id, *also),) = fused.run(uow.conn, params)
    if kept is not None and also[0] == 0:
        idempotency.raise_twin(kept)
    return store.recorded(event.img_name, event.version, event, position, recorded_at, tx_id)


@functools.lru_cache(maxsize=8)
def _append_projected_statement(backend: Backend, keeping: bool) -> Statement | None:
    """The event's INSERT and the status upsert (and, `keeping`, the guarded
    write of an answer) as one statement (None where the backend cannot fuse
    them), built once per backend."""
    return backend.fuse_insert_and_upsert(
        store.append_insert(backend, clock_bound=True),
        image_status,
        [c.name for c in image_status.columns if not c.primary_key],
        "img_name",
        {"last_position": "position"},
        prefix=_ROW_PREFIX,
        also=idempotency.guarded_write(backend) if keeping else None,
    )


#: Stand-ins for the clock in `append_first`'s fold: the columns (and the
#: kept answer's fields) that take one are those the database stamps.
_CLOCK_A = datetime(2000, 1, 1, tzinfo=UTC)
_CLOCK_B = datetime(2001, 2, 2, 2, 2, 2, 2, tzinfo=UTC)

#: What a first append keeps under its key: the answer to a row.
AnswerOf = Callable[[StatusRow], idempotency.Keep]


def append_first(
    conn: Connection,
    img_name: str,
    new: NewEvent,
    caller: tuple[Select[Any], dict[str, Any]],
    keep: AnswerOf | None = None,
) -> tuple[RecordedEvent, StatusRow] | None:
    """Append `new` as the first event of `img_name`'s stream and project it,
    in one statement on an autocommit connection (`Database.write_alone`);
    with `keep`, keep the answer it makes of the new row too.

    `caller` is the source of the event's actor and its parameters
    (`keys.ADMITTED`): no row, and nothing is written, unless the caller
    may act. Nothing is written either where the image already has a row,
    or a live answer is kept under the key: the checked way decides those.
    Returns None then, or where the backend cannot do it in one statement.

    The row is folded first by `status.apply`, as always; the database
    stamps the columns that the fold takes from the event's time. Raises
    `ConcurrencyConflict` if a concurrent first append won the stream.
    """
    backend = backend_of(conn)
    source, caller_params = caller
    row_a = apply(None, store.pending(img_name, 1, new, _CLOCK_A))
    values = row_a.as_values()
    clocked = tuple(n for n, v in values.items() if v is _CLOCK_A)
    statement = _first_statement(backend, source, clocked, keep is not None)
    if statement is None:
        return None
    params = store.event_values(img_name, 1, new)
    del params["actor"]  # the caller's, from `caller`
    params.update(caller_params)
    for name, value in values.items():
        params[_ROW_PREFIX + name] = value
    if keep is not None:
        kept_a = keep(row_a)
        kept_b = keep(apply(None, store.pending(img_name, 1, new, _CLOCK_B)))
        body_a, body_b = kept_a.answer.body, kept_b.answer.body
        if not isinstance(body_a, dict) or not isinstance(body_b, dict):
            return None
        stamped = [k for k in body_a if body_a[k] != body_b.get(k)]
        if any(not isinstance(body_a[k], str) for k in stamped):
            return None  # only whole fields are stamped by the database
        params.update(kept_a.params())
        params[f"{idempotency.PREFIX}stamped"] = stamped
    with store.conflict_on_version(backend, img_name, 0):
        found = statement.run(conn, params)
    if not found:
        return None
    ((position, recorded_at, tx_id, actor),) = found
    event = store.recorded(
        img_name, 1, dataclasses.replace(new, actor=actor), position, recorded_at, tx_id
    )
    return event, apply(None, event)


@functools.lru_cache(maxsize=16)
def _first_statement(
    backend: Backend, caller: Select[Any], clocked: tuple[str, ...], keeping: bool
) -> Statement | None:
    """`append_first`'s statement for this caller's kind, built once."""
    from_inserted = {"last_position": "position", **{n: "recorded_at" for n in clocked}}
    return backend.fuse_first_append(
        events,
        store.APPENDED_COLUMNS,
        caller,
        image_status,
        [c.name for c in image_status.columns if not c.primary_key],
        "img_name",
        from_inserted,
        prefix=_ROW_PREFIX,
        keep=idempotency_keys if keeping else None,
        keep_prefix=idempotency.PREFIX,
    )


def project(conn: Connection, row: StatusRow | None, recorded: list[RecordedEvent]) -> StatusRow:
    """Fold `recorded` onto `row` (the image's current row) and upsert the result."""
    new = row
    for ev in recorded:
        new = apply(new, ev)
    assert new is not None, "project() needs at least one event"
    backend_of(conn).upsert(conn, image_status, new.as_values(), key="img_name")
    return new


def ensure_state(conn: Connection) -> None:
    """Record the projection's version if this database has no record yet."""
    conn.execute(
        backend_of(conn)
        .insert_ignore(projection_state)
        .values(name=status.NAME, version=status.VERSION, state="ok", last_position=0)
    )
