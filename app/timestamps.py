"""The one text form of a time, in every answer and every export: RFC 3339 in UTC."""

from __future__ import annotations

from datetime import datetime

import orjson


def rfc3339(value: datetime) -> str:
    """`2024-05-01T12:00:00.654321Z`: a UTC datetime (as every column gives
    back) as `isoformat()` writes it, with `Z` for UTC and microseconds only
    when there are any. orjson formats it in C: a batch of 1,000 statuses
    formats 5,000 of these."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode()
