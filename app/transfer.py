"""Moving the event log between databases: export to a file, import from one.

The file format (JSON Lines, checked line by line) is `app.export_format`.
An import appends the file's events to another database, keeping their ids,
versions and timestamps. Only the log moves: the caller rebuilds and verifies
the projection afterwards. Leases, API keys and idempotency records are not
history and do not travel.
"""

from __future__ import annotations

import os
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError

from app.db.backend import backend_of
from app.db.engine import Database
from app.db.tables import events
from app.errors import ValidationFailed
from app.events.store import EVENT_COLUMNS
from app.export_format import (
    ExportHeader,
    TransferFileError,
    check_file,
    event_line,
    event_values,
    header_line,
    lines_of,
)
from app.progress import Progress, counted


class DivergedLog(ValidationFailed):
    """The target holds a different event where the file has one (same image
    and version, another event_id): two logs that diverged are never merged."""


@dataclass
class ImportReport:
    """What an import did: events appended, and events already present."""

    imported: int = 0
    skipped: int = 0


# --- export ---------------------------------------------------------------------


def export_events(
    db: Database,
    target: str | os.PathLike[str] | TextIO,
    progress: Progress | None = None,
    *,
    batch: int = 5000,
) -> int:
    """Write the whole log to `target` (a path, or an open text file); return
    how many events were written.

    Reads one consistent snapshot, streamed in global feed order, so writers
    may carry on meanwhile. A path is written under a `.part` name and renamed
    when complete: an interrupted export never leaves a file that looks
    finished. `progress(n)` is called as events are written. Raises
    `TransferFileError` when the file cannot be written.
    """
    if not isinstance(target, str | os.PathLike):
        return _write(db, target, progress, batch)
    path = Path(target)
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as file:
            written = _write(db, file, progress, batch)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise TransferFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def _write(db: Database, file: TextIO, progress: Progress | None, batch: int) -> int:
    with db.snapshot() as conn:
        total = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
        file.write(header_line(total, db.backend.name))
        # Every row the snapshot sees is committed, so the whole table in feed
        # order is a complete, gap-free prefix of the feed.
        query = select(*EVENT_COLUMNS).order_by(*backend_of(conn).feed_order(events))
        written = 0
        rows = conn.execution_options(yield_per=batch).execute(query)
        for row in counted(rows, progress):
            file.write(event_line(row))
            written += 1
    return written


# --- import ---------------------------------------------------------------------


def import_events(
    db: Database,
    path: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    batch: int = 1000,
    checked: ExportHeader | None = None,
) -> ImportReport:
    """Append the events of the export at `path` to `db`, in file order.

    The whole file is checked first (`check_file`), so a malformed file
    writes nothing; pass `checked`, the header `check_file` returned for this
    path, to skip that pass. Then events are inserted `batch` at a time, each
    batch its own transaction, keeping event_id, version, schema_version,
    payload and recorded_at exactly; the target assigns new positions.
    Events whose event_id is already present are skipped, so importing again
    is harmless and finishes an interrupted import.

    Raises `DivergedLog` if the target holds a different event at an image
    and version of the file: that batch is rolled back, earlier ones stay.
    Writes only the log: the caller must rebuild the projection, then verify.
    `progress(n)` is called as each batch commits.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if checked is None:
        check_file(path)
    report = ImportReport()
    pending: list[tuple[int, dict[str, Any]]] = []
    with closing(lines_of(Path(path))) as lines:
        next(lines, None)  # the header
        for lineno, text in lines:
            pending.append((lineno, event_values(lineno, text)))
            if len(pending) == batch:
                _import_batch(db, pending, report, progress)
                pending = []
    if pending:
        _import_batch(db, pending, report, progress)
    return report


def _import_batch(
    db: Database,
    rows: list[tuple[int, dict[str, Any]]],
    report: ImportReport,
    progress: Progress | None,
) -> None:
    first, last = rows[0][0], rows[-1][0]

    def diverged(message: str, img_name: str, version: int) -> DivergedLog:
        earlier = (
            f"; the {report.imported} events imported from earlier lines stay"
            if report.imported
            else ""
        )
        return DivergedLog(
            f"{message}: the two logs have diverged and are not merged. Nothing from lines "
            f"{first}-{last} was written{earlier}",
            img_name=img_name,
            version=version,
            imported=report.imported,
        )

    with db.write() as conn:
        present, taken = _already_there(conn, [values for _, values in rows])
        new: list[dict[str, Any]] = []
        for lineno, values in rows:
            name, version, event_id = values["img_name"], values["version"], values["event_id"]
            where = present.get(event_id)
            if where is not None:
                if where != (name, version):
                    raise diverged(
                        f"line {lineno}: event {event_id} is {name!r} version {version} in "
                        f"the file but {where[0]!r} version {where[1]} in the target",
                        name,
                        version,
                    )
                continue
            other = taken.get((name, version))
            if other is not None:
                raise diverged(
                    f"line {lineno}: the target already has {name!r} version {version} as "
                    f"event {other}, the file has event {event_id}",
                    name,
                    version,
                )
            new.append(values)
        if new:
            tx_id = _current_tx_id(conn)
            if tx_id is not None:
                new = [{**values, "tx_id": tx_id} for values in new]
            try:
                conn.execute(insert(events), new)
            except IntegrityError as exc:
                # Only a writer racing this import (or a file repeating an
                # event_id within one batch) gets here: the checks above ran
                # in this same transaction.
                raise DivergedLog(
                    f"lines {first}-{last} collide with events already in the target "
                    "(another writer, or a repeated event_id); nothing from them was written",
                    imported=report.imported,
                ) from exc
    report.imported += len(new)
    report.skipped += len(rows) - len(new)
    if progress is not None:
        progress(len(rows))


def _already_there(
    conn: Connection, batch: list[dict[str, Any]]
) -> tuple[dict[uuid.UUID, tuple[str, int]], dict[tuple[str, int], uuid.UUID]]:
    """The batch's events the target has by event_id, and its (image, version)
    slots the target has filled, with the event_id that fills them."""
    ids = [values["event_id"] for values in batch]
    present = {
        r.event_id: (r.img_name, r.version)
        for r in conn.execute(
            select(events.c.event_id, events.c.img_name, events.c.version).where(
                events.c.event_id.in_(ids)
            )
        )
    }
    slots = [(values["img_name"], values["version"]) for values in batch]
    taken = {
        (r.img_name, r.version): r.event_id
        for r in conn.execute(
            select(events.c.event_id, events.c.img_name, events.c.version).where(
                tuple_(events.c.img_name, events.c.version).in_(slots)
            )
        )
    }
    return present, taken


def _current_tx_id(conn: Connection) -> int | None:
    """The transaction id the feed orders by (PostgreSQL), or None (SQLite).

    Selected once per batch and bound as a value: the same for every row of
    the transaction, as `store.append` would write it.
    """
    expr = backend_of(conn).transaction_id()
    if expr is None:
        return None
    return int(conn.execute(select(expr)).scalar_one())
