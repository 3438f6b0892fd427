"""The opaque cursors of listings and histories, and the one error for a bad one.

A cursor is a JSON list, URL-safe base64 without padding. The feed's
cursors are the backend's (`Backend.make_cursor`); a bad one of either
kind is refused with the same `bad_cursor` error.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.errors import ValidationFailed


def bad_cursor(name: str = "cursor") -> ValidationFailed:
    """422 `validation_error` naming the query parameter `name`."""
    msg = f"{name} is not one this API gave out"
    return ValidationFailed(msg, errors=[{"loc": ["query", name], "msg": msg}])


def encode(payload: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode(cursor: str, name: str = "cursor") -> list[Any]:
    """The list a cursor holds; raises `bad_cursor(name)` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad_cursor(name) from exc
    if not isinstance(value, list):
        raise bad_cursor(name)
    return value
