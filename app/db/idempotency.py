"""Remembered answers of writes sent with an Idempotency-Key, per image.

What an answer holds is its caller's business (the HTTP layer stores its
status and body); this module keeps it in the command's transaction,
after the image's status row was locked (the lock order).

A command reads the answer kept under its key with its locked row
(`app.projections.projector.load_current`), and keeps its own answer in
the statement that appends its event (`Keep`, `guarded_write`). Each write of an
answer is guarded: it replaces only an expired record. A live one means
that a twin request with the same key committed first, unseen by this
command's read (taken before it waited for the row lock); the write then
raises `ConcurrencyConflict`, and the command, decided again, finds the
twin's answer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import Connection, Insert, bindparam, select

from app.db.backend import Backend
from app.db.statement import Statement
from app.db.tables import idempotency_keys
from app.errors import ConcurrencyConflict
from app.events.types import Json

#: How the guarded write names its parameters, apart from a fused append's.
PREFIX = "idem_"

#: The columns of a kept answer, in `Remembered`'s order.
COLUMNS = (
    idempotency_keys.c.request_hash,
    idempotency_keys.c.answer_status,
    idempotency_keys.c.response,
    idempotency_keys.c.created_at,
)


@dataclass(frozen=True)
class Remembered:
    fingerprint: str
    #: The remembered answer: a number and a JSON document, as the caller gave them.
    status: int
    body: Json
    created_at: datetime

    @classmethod
    def of(cls, values: Sequence[Any]) -> Remembered | None:
        """From `COLUMNS`' values, read with an outer join (all None: no record)."""
        return cls(*values) if values[0] is not None else None


@dataclass(frozen=True)
class Keep:
    """An answer to keep under `key`, replacing a record created before
    `expired_before` (one kept longer than the promise)."""

    img_name: str
    key: str
    answer: Remembered
    expired_before: datetime

    def params(self) -> dict[str, Any]:
        """The parameters of `guarded_write`."""
        return {
            f"{PREFIX}img_name": self.img_name,
            f"{PREFIX}key": self.key,
            f"{PREFIX}request_hash": self.answer.fingerprint,
            f"{PREFIX}answer_status": self.answer.status,
            f"{PREFIX}response": self.answer.body,
            f"{PREFIX}created_at": self.answer.created_at,
            f"{PREFIX}expired_before": self.expired_before,
        }


def find(conn: Connection, img_name: str, key: str) -> Remembered | None:
    """The answer kept under `key`, as this statement's snapshot sees it."""
    c = idempotency_keys.c
    found = conn.execute(select(*COLUMNS).where(c.img_name == img_name, c.key == key)).first()
    return Remembered(*found) if found is not None else None


@functools.lru_cache(maxsize=4)
def guarded_write(backend: Backend) -> Insert:
    """The INSERT of a `Keep` … ON CONFLICT DO UPDATE only of an expired
    record: a live one stays as it is, and nothing is written."""
    c = idempotency_keys.c
    values = {
        column.key: bindparam(f"{PREFIX}{column.key}", type_=column.type)
        for column in (c.img_name, c.key, *COLUMNS)
    }
    expired = c.created_at < bindparam(f"{PREFIX}expired_before", type_=c.created_at.type)
    return backend.upsert_statement(idempotency_keys, values, ["img_name", "key"], only_if=expired)


@functools.lru_cache(maxsize=4)
def _keep_statement(backend: Backend) -> Statement:
    return Statement(guarded_write(backend).returning(idempotency_keys.c.key), prepare=True)


def keep(backend: Backend, conn: Connection, keep: Keep) -> None:
    """Keep an answer on its own (a command that appended nothing, or a
    backend that does not fuse). Raises `ConcurrencyConflict` where a live
    answer is already kept under the key."""
    if not _keep_statement(backend).run(conn, keep.params()):
        raise_twin(keep)


def raise_twin(keep: Keep) -> NoReturn:
    """The guarded write found a live answer: a twin request committed first."""
    raise ConcurrencyConflict(
        f"Idempotency-Key {keep.key!r} was taken by a concurrent request",
        img_name=keep.img_name,
    )
