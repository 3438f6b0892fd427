"""Remembered answers of writes sent with an Idempotency-Key, per image.

What an answer holds is its caller's business (the HTTP layer stores its
status and body); this module keeps it in the command's transaction,
after the image's status row was locked (the lock order).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from app.db.backend import Backend
from app.db.tables import idempotency_keys
from app.events.types import Json


@dataclass(frozen=True)
class Remembered:
    fingerprint: str
    #: The remembered answer: a number and a JSON document, as the caller gave them.
    status: int
    body: Json
    created_at: datetime


def find(conn: Connection, img_name: str, key: str) -> Remembered | None:
    c = idempotency_keys.c
    found = conn.execute(
        select(c.request_hash, c.answer_status, c.response, c.created_at).where(
            c.img_name == img_name, c.key == key
        )
    ).first()
    return Remembered(*found) if found is not None else None


def remember(
    backend: Backend,
    conn: Connection,
    img_name: str,
    key: str,
    answer: Remembered,
) -> None:
    """Keep `answer` under `key`; an expired record under the same key is replaced."""
    values = {
        "img_name": img_name,
        "key": key,
        "request_hash": answer.fingerprint,
        "answer_status": answer.status,
        "response": answer.body,
        "created_at": answer.created_at,
    }
    backend.upsert(conn, idempotency_keys, values, key=["img_name", "key"])
