"""The export file: JSON Lines, a header line and then one event per line.

An export holds a header line, then each event as it is stored (payloads are
not upcast: the log is forever), one JSON object per line, in global feed
order. This module writes event lines and reads a file back, checking every
line before anything is written to a database; `app.transfer` moves the
events between a database and such a file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

from app.db.tables import events
from app.errors import ValidationFailed
from app.events.store import APPENDED_COLUMNS
from app.events.upcasters import upcast
from app.lifecycle import EventType, Status
from app.progress import Progress, counted
from app.timestamps import rfc3339

#: The header's `format`, and the one format version this code reads and writes.
FORMAT = "vidledger-events"
FORMAT_VERSION = 1

_HEADER_FIELDS = {"format", "version", "events", "exported_at", "source"}
_REQUIRED = {*APPENDED_COLUMNS, "recorded_at"}
#: `position` is the source's, for information only: the target assigns its own.
_ALLOWED = _REQUIRED | {"position"}
#: What an event line holds, in this order.
_EXPORTED = [*APPENDED_COLUMNS, "recorded_at", "position"]
_NULLABLE_TEXT = ("reason", "correlation_id", "idempotency_key")
_INT32_MAX = 2**31 - 1


class TransferFileError(ValidationFailed):
    """A file that is not a readable export; the detail names the line."""


@dataclass(frozen=True)
class ExportHeader:
    """The first line of an export."""

    events: int
    exported_at: str | None = None
    source: str | None = None


# --- writing --------------------------------------------------------------------


def header_line(events_count: int, source: str) -> str:
    """The first line of an export of `events_count` events from `source`."""
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "events": events_count,
        "exported_at": rfc3339(datetime.now(UTC)),
        "source": source,
    }
    return json.dumps(header) + "\n"


def event_line(row: Any) -> str:
    """One event as the export stores it: its log row, with text ids and times."""
    stored = {name: getattr(row, name) for name in _EXPORTED}
    stored["event_id"] = str(row.event_id)
    stored["recorded_at"] = rfc3339(row.recorded_at)
    try:
        return json.dumps(stored, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ValidationFailed(
            f"event {row.event_id} ({row.img_name!r} v{row.version}) holds a number "
            "JSON cannot carry (NaN or infinity); it cannot be exported"
        ) from exc


# --- reading a file -------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> ExportHeader:
    """The header of the export at `path`, checked; the events are not read.

    Raises `TransferFileError` if the file cannot be read or its first line
    is not a header of a format version this code reads.
    """
    with closing(lines_of(Path(path))) as lines:
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
    count = 0
    with closing(lines_of(Path(path))) as lines:
        first = next(lines, None)
        if first is None:
            raise TransferFileError(f"line 1: {path} is empty; expected a {FORMAT} header")
        header = _header(*first)
        for lineno, text in counted(lines, progress):
            values = event_values(lineno, text)
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
            count += 1
    if count != header.events:
        raise TransferFileError(
            f"line {count + 2}: the header promises {header.events} events but the file "
            f"holds {count}; it is truncated or was edited",
            line=count + 2,
        )
    return header


def lines_of(path: Path) -> Generator[tuple[int, str], None, None]:
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


def event_values(lineno: int, text: str) -> dict[str, Any]:
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
