"""COPY's text format: one row a line, fields split by tabs, `\\N` for NULL.

The format alone, with no connection: the PostgreSQL backend streams it,
and a rebuild writes status rows in it directly (its hot loop).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape(text: str) -> str:
    """`text` with COPY's escapes. Most text has nothing to escape, and four
    scans for it cost a tenth of a `translate` (a rebuild writes millions)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(COPY_ESCAPES)
    return text


def copy_text(value: Any) -> str:
    # Checked in order of how often a status row holds each type.
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is str:
        text_value: str = value
    elif kind is bool:
        return "t" if value else "f"
    elif kind is int or kind is float:
        return str(value)
    elif kind is datetime:
        return str(value.isoformat())
    elif kind is dict or kind is list:
        text_value = orjson.dumps(value).decode()
    else:
        text_value = str(value)
    return escape(text_value)


COPY_NULL = "\\N"


def copy_bool(value: bool | None) -> str:
    return COPY_NULL if value is None else ("t" if value else "f")


def copy_json(value: Any) -> str:
    return COPY_NULL if value is None else escape(orjson.dumps(value).decode())


_UNESCAPE = {
    "\\": "\\",
    "t": "\t",
    "n": "\n",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


def unescape(field: str) -> str | None:
    """A field of COPY's text format: `\\N` is NULL, backslash escapes the rest."""
    if field == "\\N":
        return None
    if "\\" not in field:
        return field
    out = []
    chars = iter(field)
    for ch in chars:
        out.append(_UNESCAPE.get(next(chars, ""), "") if ch == "\\" else ch)
    return "".join(out)


class LineSink:
    """A file-like target for COPY … TO STDOUT: one `write` per row."""

    def __init__(self, on_row: Callable[[list[str | None]], None], escaped: frozenset[int]) -> None:
        self.on_row = on_row
        self.escaped = escaped

    def write(self, data: bytes | str) -> int:
        line = data.decode() if isinstance(data, bytes) else data
        fields: list[str | None] = line[:-1].split("\t")  # type: ignore[assignment]
        if "\\" in line:  # rare: only then can a field hold an escape or a NULL
            for i in self.escaped:
                fields[i] = unescape(fields[i])  # type: ignore[arg-type]
        self.on_row(fields)
        return len(data)
