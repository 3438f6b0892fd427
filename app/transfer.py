"""Moving the event log between databases: export to JSON Lines, import from it.

An export holds a header line, then each event as it is stored (payloads are
not upcast: the log is forever), one JSON object per line, in global feed
order. An import appends those events to another database, keeping their ids,
versions and timestamps. Only the log moves: the caller rebuilds and verifies
the projection afterwards. Leases, API keys and idempotency records are not
history and do not travel.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeGuard

from sqlalchemy import Connection, func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError

from app.db import dialect
from app.db.engine import Database
from app.db.tables import events
from app.errors import ValidationFailed
from app.events.store import APPENDED_COLUMNS, EVENT_COLUMNS
from app.events.upcasters import upcast
from app.lifecycle import EventType, Status

#: The header's `format`, and the one format version this code reads and writes.
FORMAT = "vidledger-events"
FORMAT_VERSION = 1

Progress = Callable[[int], None]

#: How many events go by between two progress calls on export.
_PROGRESS_EVERY = 1000

_HEADER_FIELDS = {"format", "version", "events", "exported_at", "source"}
_REQUIRED = {*APPENDED_COLUMNS, "recorded_at"}
#: `position` is the source's, for information only: the target assigns its own.
_ALLOWED = _REQUIRED | {"position"}
_NULLABLE_TEXT = ("reason", "correlation_id", "idempotency_key")
_INT32_MAX = 2**31 - 1


class TransferFileError(ValidationFailed):
    """A file that is not a readable export; the detail names the line."""


class DivergedLog(ValidationFailed):
    """The target holds a different event where the file has one (same image
    and version, another event_id): two logs that diverged are never merged."""


@dataclass(frozen=True)
class ExportHeader:
    """The first line of an export."""

    events: int
    exported_at: str | None = None
    source: str | None = None


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
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "events": total,
            "exported_at": _rfc3339(datetime.now(UTC)),
            "source": "postgresql" if db.is_postgres else "sqlite",
        }
        file.write(json.dumps(header) + "\n")
        # Every row the snapshot sees is committed, so the whole table in feed
        # order is a complete, gap-free prefix of the feed.
        query = select(*EVENT_COLUMNS).order_by(*dialect.feed_order(conn, events))
        written = unreported = 0
        for row in conn.execution_options(yield_per=batch).execute(query):
            file.write(_line(row))
            written += 1
            unreported += 1
            if progress is not None and unreported == _PROGRESS_EVERY:
                progress(unreported)
                unreported = 0
        if progress is not None and unreported:
            progress(unreported)
    return written


def _line(row: Any) -> str:
    stored = {
        "event_id": str(row.event_id),
        "img_name": row.img_name,
        "version": row.version,
        "event_type": row.event_type,
        "schema_version": row.schema_version,
        "from_status": row.from_status,
        "to_status": row.to_status,
        "data": row.data,
        "actor": row.actor,
        "reason": row.reason,
        "correlation_id": row.correlation_id,
        "idempotency_key": row.idempotency_key,
        "recorded_at": _rfc3339(row.recorded_at),
        "position": row.position,
    }
    try:
        return json.dumps(stored, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ValidationFailed(
            f"event {row.event_id} ({row.img_name!r} v{row.version}) holds a number "
            "JSON cannot carry (NaN or infinity); it cannot be exported"
        ) from exc


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- reading a file -------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> ExportHeader:
    """The header of the export at `path`, checked; the events are not read.

    Raises `TransferFileError` if the file cannot be read or its first line
    is not a header of a format version this code reads.
    """
    with closing(_lines(Path(path))) as lines:
        first = next(lines, None)
    if first is None:
        raise TransferFileError(f"line 1: {path} is empty; expected a {FORMAT} header")
    return _header(*first)


def check_file(path: str | os.PathLike[str], progress: Progress | None = None) -> ExportHeader:
    """Read the whole export at `path` and check every line; return its header.

    Checks each event's fields and types, that this code can read (upcast)
    its payload, that each image's versions run 1, 2, 3... without a gap or
    a repeat, and that the header's count matches. Writes nothing. Raises
    `TransferFileError` naming the first bad line.
    """
    last_version: dict[str, int] = {}
    counted = unreported = 0
    with closing(_lines(Path(path))) as lines:
        first = next(lines, None)
        if first is None:
            raise TransferFileError(f"line 1: {path} is empty; expected a {FORMAT} header")
        header = _header(*first)
        for lineno, text in lines:
            values = _event_values(lineno, text)
            name, version = values["img_name"], values["version"]
            before = last_version.get(name, 0)
            if version != before + 1:
                after = f"after version {before}" if before else "as its first event"
                raise TransferFileError(
                    f"line {lineno}: {name!r} version {version} comes {after}; "
                    "an image's versions must run 1, 2, 3... in file order",
                    line=lineno,
                )
            last_version[name] = version
            counted += 1
            unreported += 1
            if progress is not None and unreported == _PROGRESS_EVERY:
                progress(unreported)
                unreported = 0
    if progress is not None and unreported:
        progress(unreported)
    if counted != header.events:
        raise TransferFileError(
            f"line {counted + 2}: the header promises {header.events} events but the file "
            f"holds {counted}; it is truncated or was edited",
            line=counted + 2,
        )
    return header


def _lines(path: Path) -> Generator[tuple[int, str], None, None]:
    try:
        file = path.open("rb")
    except OSError as exc:
        raise TransferFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with file:
        for lineno, raw in enumerate(file, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TransferFileError(f"line {lineno}: not UTF-8 text", line=lineno) from exc
            yield lineno, text.rstrip("\r\n")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json(lineno: int, text: str) -> dict[str, Any]:
    if not text.strip():
        raise TransferFileError(f"line {lineno}: empty line", line=lineno)
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise TransferFileError(
            f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})", line=lineno
        ) from exc
    except ValueError as exc:
        raise TransferFileError(f"line {lineno}: {exc}", line=lineno) from exc
    if not isinstance(value, dict):
        raise TransferFileError(f"line {lineno}: not a JSON object", line=lineno)
    return value


def _header(lineno: int, text: str) -> ExportHeader:
    try:
        value = _json(lineno, text)
    except TransferFileError as exc:
        raise TransferFileError(
            f"{exc.detail}; this is not a {FORMAT} export", line=lineno
        ) from exc
    if value.get("format") != FORMAT:
        raise TransferFileError(
            f"line {lineno}: not a {FORMAT} export (the header's format is "
            f"{value.get('format')!r})",
            line=lineno,
        )
    version = value.get("version")
    if not _is_int(version):
        raise TransferFileError(f"line {lineno}: the header has no format version", line=lineno)
    if version != FORMAT_VERSION:
        raise TransferFileError(
            f"line {lineno}: format version {version}; this vidledger reads version "
            f"{FORMAT_VERSION}",
            line=lineno,
        )
    unknown = value.keys() - _HEADER_FIELDS
    if unknown:
        raise TransferFileError(
            f"line {lineno}: unknown header field(s) {', '.join(sorted(unknown))}", line=lineno
        )
    count = value.get("events")
    if not _is_int(count) or count < 0:
        raise TransferFileError(
            f"line {lineno}: the header's events count is missing or not a whole number",
            line=lineno,
        )
    exported_at, source = value.get("exported_at"), value.get("source")
    return ExportHeader(
        events=count,
        exported_at=exported_at if isinstance(exported_at, str) else None,
        source=source if isinstance(source, str) else None,
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_limit(name: str) -> int | None:
    length: int | None = getattr(events.c[name].type, "length", None)
    return length


def _event_values(lineno: int, text: str) -> dict[str, Any]:
    """One event line as column values for `video_status_events` (no position)."""

    def bad(message: str) -> TransferFileError:
        return TransferFileError(f"line {lineno}: {message}", line=lineno)

    obj = _json(lineno, text)
    missing = _REQUIRED - obj.keys()
    if missing:
        raise bad(f"missing field(s) {', '.join(sorted(missing))}")
    unknown = obj.keys() - _ALLOWED
    if unknown:
        raise bad(f"unknown field(s) {', '.join(sorted(unknown))}")

    def text_field(name: str, *, nullable: bool) -> str | None:
        value = obj[name]
        if value is None and nullable:
            return None
        if nullable and not isinstance(value, str):
            raise bad(f"{name} must be a string or null")
        if not nullable and (not isinstance(value, str) or not value):
            raise bad(f"{name} must be a non-empty string")
        limit = _text_limit(name)
        if limit is not None and len(value) > limit:
            raise bad(f"{name} is longer than {limit} characters")
        return str(value)

    try:
        event_id = uuid.UUID(obj["event_id"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise bad(f"event_id {obj['event_id']!r} is not a UUID") from exc
    version, schema_version = obj["version"], obj["schema_version"]
    if not _is_int(version) or not 1 <= version <= _INT32_MAX:
        raise bad(f"version {version!r} is not a positive whole number")
    if not _is_int(schema_version) or schema_version < 1:
        raise bad(f"schema_version {schema_version!r} is not a positive whole number")
    try:
        event_type = EventType(obj["event_type"])
        from_status, to_status = Status(obj["from_status"]), Status(obj["to_status"])
    except ValueError as exc:
        raise bad(str(exc)) from exc
    data = obj["data"]
    if not isinstance(data, dict):
        raise bad("data must be a JSON object")
    try:
        upcast(event_type, schema_version, data)  # can this code read it at all?
    except (ValueError, KeyError, TypeError) as exc:
        raise bad(
            f"this vidledger cannot read {event_type.value} v{schema_version}: {exc}"
        ) from exc
    if _holds_nul(data):
        raise bad("data holds a NUL character, which PostgreSQL cannot store")
    recorded_at = obj["recorded_at"]
    try:
        when = datetime.fromisoformat(recorded_at)
    except (TypeError, ValueError) as exc:
        raise bad(f"recorded_at {recorded_at!r} is not an RFC 3339 timestamp") from exc
    if when.tzinfo is None:
        raise bad(f"recorded_at {recorded_at!r} has no time zone")
    values: dict[str, Any] = {
        "event_id": event_id,
        "img_name": text_field("img_name", nullable=False),
        "version": version,
        "event_type": event_type.value,
        "schema_version": schema_version,
        "from_status": from_status.value,
        "to_status": to_status.value,
        "data": data,
        "actor": text_field("actor", nullable=False),
        "recorded_at": when.astimezone(UTC),
    }
    for name in _NULLABLE_TEXT:
        values[name] = text_field(name, nullable=True)
    for name in ("img_name", "actor", *_NULLABLE_TEXT):
        if values[name] is not None and "\x00" in values[name]:
            raise bad(f"{name} holds a NUL character, which PostgreSQL cannot store")
    return values


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


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
    with closing(_lines(Path(path))) as lines:
        next(lines, None)  # the header
        for lineno, text in lines:
            pending.append((lineno, _event_values(lineno, text)))
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
    expr = dialect.tx_id_expr(conn)
    if expr is None:
        return None
    return int(conn.execute(select(expr)).scalar_one())
