"""Use cases: every command is one transaction — read, decide, append, project, commit.

The edges (`api`, `worker`, `cli`) call this module and nothing below it.
A command that loses an optimistic-concurrency race is decided again, a
bounded number of times; if the new decision is a refusal, that refusal is
the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, select, update

from app import lifecycle
from app.db.engine import Database
from app.db.tables import idempotency_keys, image_status, leases
from app.errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    LeaseLost,
    Unavailable,
)
from app.events import types as ev
from app.events.types import Json, NewEvent, RecordedEvent
from app.lifecycle import EventType, Status
from app.projections import projector
from app.projections.projector import Current
from app.projections.status import StatusRow
from app.video_files import VideoFiles
from app.views import VideoState, status_body

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a command is decided again after losing a race.
CONFLICT_RETRIES = 8
#: How long an Idempotency-Key's answer is replayed (API.md: at least 24 h).
IDEMPOTENCY_TTL = timedelta(hours=48)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Policy:
    """Numbers that shape retries and leases."""

    max_attempts: int = 3
    lease_seconds: int = 60
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 300.0


@dataclass(frozen=True)
class Actor:
    """Who causes an event: an API key's name, `worker:<id>` or `system:reaper`."""

    name: str
    correlation_id: str | None = None


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key and the fingerprint of the request it came with."""

    key: str
    fingerprint: str
    success_status: int

    @staticmethod
    def of(key: str, operation: str, body: Any, success_status: int) -> Idempotency:
        canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return Idempotency(key=key, fingerprint=digest, success_status=success_status)


@dataclass(frozen=True)
class Answer:
    """A write's answer: status code, body, and whether it was replayed."""

    status_code: int
    body: Json
    replayed: bool = False


@dataclass(frozen=True)
class Task:
    img_name: str
    source_type: str | None
    prompt: str | None
    params: Json
    generation: int
    attempt: int
    lease_token: str
    lease_expires_at: datetime


@dataclass(frozen=True)
class Heartbeat:
    lease_expires_at: datetime
    cancel_requested: bool


class VideoService:
    """The commands of DESIGN §2 over a `Database`.

    `clock` and `jitter` are injectable so that tests can pin time and
    backoff; both default to the real thing. Events are stamped by the
    database clock; leases and backoff use `clock`. A fresh request is due
    from its `recorded_at`, so the two clocks should agree (NTP), as they do
    on one host; skew only delays a claim by the skew.
    """

    def __init__(
        self,
        db: Database,
        policy: Policy | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        on_append: Callable[[list[RecordedEvent]], None] | None = None,
        files: VideoFiles | None = None,
    ) -> None:
        self.db = db
        self.policy = policy or Policy()
        self.files = files
        self._local = threading.local()
        self.clock = clock
        self.jitter = jitter
        self._on_append = on_append

    # --- plumbing ----------------------------------------------------------

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a write transaction, again after a lost race."""
        for _ in range(CONFLICT_RETRIES):
            self._local.appended = []
            try:
                with self.db.write() as conn:
                    result = work(conn)
            except ConcurrencyConflict:
                log.debug("concurrency conflict; deciding again")
                continue
            # Only now is the append visible to others: tell the listeners.
            if self._on_append is not None and self._local.appended:
                self._on_append(self._local.appended)
            return result
        raise Unavailable("too many concurrent writers on this image; try again")

    def _append(self, conn: Connection, current: Current, new: list[NewEvent]) -> StatusRow:
        recorded, result = projector.append(conn, current, new)
        for r in recorded:
            log.info(
                "appended %s",
                r.event_type.value,
                extra={
                    "img_name": r.img_name,
                    "event_type": r.event_type.value,
                    "position": r.position,
                    "version": r.version,
                    "actor": r.actor,
                },
            )
        self._local.appended.extend(recorded)
        return result

    @staticmethod
    def _event(
        row: StatusRow | None,
        img_name: str,
        event_type: EventType,
        data: Json,
        actor: Actor,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
        regenerate: bool = False,
    ) -> NewEvent:
        """Ask the state machine, then build the event (raises if refused)."""
        current = row.video_status if row is not None else Status.NONE
        target = lifecycle.transition(img_name, current, event_type, regenerate=regenerate)
        return NewEvent(
            event_type=event_type,
            from_status=current,
            to_status=target,
            data=data,
            actor=actor.name,
            reason=reason,
            correlation_id=actor.correlation_id,
            idempotency_key=idempotency_key,
        )

    def _client_write(
        self,
        img_name: str,
        actor: Actor,
        idem: Idempotency | None,
        success_status: int,
        decide: Callable[[StatusRow | None], tuple[EventType, Json] | None],
        *,
        reason: str | None = None,
        regenerate: bool = False,
    ) -> Answer:
        """A client command: idempotency check, decide, append, remember the answer.

        `decide(row)` names the event to append and its payload, or None for
        a command that changes nothing; the state machine then has the last
        word on whether that event is allowed.
        """

        def work(conn: Connection) -> Answer:
            # The row lock first (the lock order), then the replay check: a
            # twin request with the same key that waited behind this lock
            # finds the first one's answer.
            current = projector.load_current(conn, img_name)
            if idem is not None:
                replay = self._replay(conn, img_name, idem)
                if replay is not None:
                    return replay
            row = current.row
            decision = decide(row)
            if decision is not None:
                event_type, data = decision
                new = self._event(
                    row,
                    img_name,
                    event_type,
                    data,
                    actor,
                    reason=reason,
                    idempotency_key=idem.key if idem else None,
                    regenerate=regenerate,
                )
                row = self._append(conn, current, [new])
            body = status_body(
                VideoState(row=row, progress=self._progress(conn, row))
                if row is not None
                else VideoState(row=StatusRow(img_name=img_name))
            )
            if idem is not None:
                self._remember(conn, img_name, idem, success_status, body)
            return Answer(status_code=success_status, body=body)

        return self._in_transaction(work)

    def _replay(self, conn: Connection, img_name: str, idem: Idempotency) -> Answer | None:
        found = conn.execute(
            select(
                idempotency_keys.c.request_hash,
                idempotency_keys.c.status_code,
                idempotency_keys.c.response,
                idempotency_keys.c.created_at,
            ).where(idempotency_keys.c.img_name == img_name, idempotency_keys.c.key == idem.key)
        ).first()
        if found is None or found.created_at < self.clock() - IDEMPOTENCY_TTL:
            return None
        if found.request_hash != idem.fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idem.key!r} was already used with a different request",
                img_name=img_name,
            )
        return Answer(status_code=found.status_code, body=found.response, replayed=True)

    def _remember(
        self, conn: Connection, img_name: str, idem: Idempotency, status_code: int, body: Json
    ) -> None:
        values = {
            "img_name": img_name,
            "key": idem.key,
            "request_hash": idem.fingerprint,
            "status_code": status_code,
            "response": body,
            "created_at": self.clock(),
        }
        # Upsert: an expired record under the same key is replaced. A live one
        # cannot be here, since _replay ran first in this transaction.
        self.db.backend.upsert(conn, idempotency_keys, values, key=["img_name", "key"])

    @staticmethod
    def _progress(conn: Connection, row: StatusRow) -> float | None:
        if row.video_status is not Status.PROCESSING:
            return None
        value = conn.execute(
            select(leases.c.progress).where(leases.c.img_name == row.img_name)
        ).scalar()
        return float(value) if value is not None else None

    # --- client commands ------------------------------------------------------

    def request_video(
        self,
        img_name: str,
        source_type: str,
        actor: Actor,
        *,
        prompt: str | None = None,
        params: Json | None = None,
        regenerate: bool = False,
        idem: Idempotency | None = None,
    ) -> Answer:
        """Append `VideoRequested`. Raises `VideoInProgress`, `VideoExists`,
        `IdempotencyKeyReused`; answers 202 with the new status."""
        data = ev.requested(source_type, prompt, params or {}, regenerate)
        return self._client_write(
            img_name,
            actor,
            idem,
            202,
            lambda _: (EventType.REQUESTED, data),
            regenerate=regenerate,
        )

    def cancel_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Answer:
        """Cancel a pending video at once, or flag a processing one for its worker.

        A second cancel of a processing video changes nothing. Raises
        `InvalidTransition` for any other status.
        """

        def decide(row: StatusRow | None) -> tuple[EventType, Json] | None:
            current = row.video_status if row is not None else Status.NONE
            requested = row.cancel_requested if row is not None else False
            wanted = lifecycle.cancel_event(img_name, current, requested)
            return (wanted, {}) if wanted is not None else None

        return self._client_write(img_name, actor, idem, 200, decide, reason=reason)

    def retry_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Answer:
        """Put a failed or cancelled video back to pending, attempts reset."""
        return self._client_write(
            img_name, actor, idem, 202, lambda _: (EventType.RETRY_REQUESTED, {}), reason=reason
        )

    def delete_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Answer:
        """Delete a completed, failed or cancelled video; the status becomes `none`.

        The video file is removed once the event has committed.
        """
        removed: list[str | None] = [None]

        def decide(row: StatusRow | None) -> tuple[EventType, Json]:
            removed[0] = row.video_filename if row is not None else None
            return EventType.DELETED, ev.deleted(removed[0])

        answer = self._client_write(img_name, actor, idem, 200, decide, reason=reason)
        if not answer.replayed and self.files is not None:
            self.files.remove(removed[0])
        return answer

    # --- worker commands ------------------------------------------------------

    def claim_task(
        self,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        source_types: list[str] | None = None,
    ) -> Task | None:
        """Claim the oldest due pending video, or return None if nothing is due.

        Appends `VideoProcessingStarted` at the version read, so a conflict
        means another worker won; the claim then looks again.
        """
        seconds = lease_seconds or self.policy.lease_seconds
        actor = Actor(f"worker:{worker_id}")

        backend = self.db.backend

        def work(conn: Connection) -> Task | None:
            now = self.clock()
            query = (
                select(image_status.c.img_name)
                .where(image_status.c.video_status == Status.PENDING.value)
                .where(image_status.c.not_before <= now)
                .order_by(image_status.c.not_before, image_status.c.requested_at)
                .limit(1)
            )
            if source_types:
                query = query.where(backend.in_list(image_status.c.source_type, source_types))
            # The row lock is the first one taken here too (the lock order);
            # load_current below reads the row this already holds.
            img_name = conn.execute(backend.claim_due(query)).scalar()
            if img_name is None:
                return None
            current = projector.load_current(conn, img_name)
            row = current.row
            assert row is not None
            token = secrets.token_hex(16)
            expires = now + timedelta(seconds=seconds)
            attempt = row.attempts + 1
            data = ev.processing_started(worker_id, expires, attempt)
            row = self._append(
                conn,
                current,
                [self._event(row, img_name, EventType.PROCESSING_STARTED, data, actor)],
            )
            lease = {
                "img_name": img_name,
                "lease_token": token,
                "worker_id": worker_id,
                "generation": row.generation,
                "attempt": attempt,
                "claimed_at": now,
                "expires_at": expires,
                "lease_seconds": seconds,
                "heartbeat_at": None,
                "progress": 0.0,
            }
            backend.upsert(conn, leases, lease, key="img_name")
            return Task(
                img_name=img_name,
                source_type=row.source_type,
                prompt=row.prompt,
                params=row.params or dict(ev.DEFAULT_PARAMS),
                generation=row.generation,
                attempt=attempt,
                lease_token=token,
                lease_expires_at=expires,
            )

        return self._in_transaction(work)

    def _fence(
        self, conn: Connection, img_name: str, token: str
    ) -> tuple[Current, StatusRow, Actor]:
        """The row of a task whose lease `token` is still current (as read, and
        as a row), and the worker that holds it. Raises `LeaseLost` otherwise
        (fencing)."""
        current = projector.load_current(conn, img_name)  # the lock order: row first
        lease = conn.execute(
            select(leases.c.lease_token, leases.c.expires_at, leases.c.worker_id).where(
                leases.c.img_name == img_name
            )
        ).first()
        if (
            lease is None
            # Bytes: compare_digest refuses a str with non-ASCII characters,
            # and a token is whatever the caller sent.
            or not secrets.compare_digest(lease.lease_token.encode(), token.encode())
            or lease.expires_at <= self.clock()
        ):
            raise LeaseLost(
                f"the lease on {img_name!r} is no longer yours; nothing was recorded",
                img_name=img_name,
            )
        row = current.row
        if row is None or row.video_status is not Status.PROCESSING:
            raise LeaseLost(f"{img_name!r} is no longer processing", img_name=img_name)
        return current, row, Actor(f"worker:{lease.worker_id}")

    def heartbeat(self, img_name: str, token: str, progress: float | None = None) -> Heartbeat:
        """Extend the lease and record progress (0-1).

        Tells the worker whether a cancel was requested. Raises `LeaseLost`.
        """

        def work(conn: Connection) -> Heartbeat:
            _, row, _ = self._fence(conn, img_name, token)
            now = self.clock()
            seconds = conn.execute(
                select(leases.c.lease_seconds).where(leases.c.img_name == img_name)
            ).scalar_one()
            expires = now + timedelta(seconds=seconds)
            values: dict[str, Any] = {"expires_at": expires, "heartbeat_at": now}
            if progress is not None:
                values["progress"] = progress
            conn.execute(update(leases).where(leases.c.img_name == img_name).values(values))
            return Heartbeat(lease_expires_at=expires, cancel_requested=row.cancel_requested)

        return self._in_transaction(work)

    def _finish(
        self, img_name: str, token: str, build: Callable[[StatusRow, Actor], NewEvent]
    ) -> Json:
        """A fenced worker write: one event, then the lease is dropped."""

        def work(conn: Connection) -> Json:
            current, row, actor = self._fence(conn, img_name, token)
            row = self._append(conn, current, [build(row, actor)])
            conn.execute(delete(leases).where(leases.c.img_name == img_name))
            return status_body(VideoState(row=row))

        return self._in_transaction(work)

    def complete_task(
        self, img_name: str, token: str, video_filename: str, *, metadata: Json | None = None
    ) -> Json:
        """Record the finished video. Raises `LeaseLost` if the lease is not current.

        The video it replaces (a regeneration) is removed once this commits.
        """
        data = ev.completed(video_filename, metadata or {})
        replaced: list[str | None] = [None]

        def build(row: StatusRow, actor: Actor) -> NewEvent:
            replaced[0] = row.video_filename if row.video_filename != video_filename else None
            return self._event(row, img_name, EventType.COMPLETED, data, actor)

        body = self._finish(img_name, token, build)
        if self.files is not None:
            self.files.remove(replaced[0])
        return body

    def fail_task(
        self, img_name: str, token: str, error_code: str, error_message: str, retryable: bool
    ) -> Json:
        """Record a failed attempt: retried with backoff while it is retryable and
        attempts are left, else `VideoFailed`. Raises `LeaseLost`."""
        error = ev.error_payload(error_code, error_message, retryable)
        return self._finish(
            img_name, token, lambda row, actor: self._failure_event(row, error, actor)
        )

    def acknowledge_cancel(self, img_name: str, token: str) -> Json:
        """The worker stopped after a cancel request: append `VideoCancelled`."""
        return self._finish(
            img_name,
            token,
            lambda row, actor: self._event(
                row, img_name, EventType.CANCELLED, {}, actor, reason="cancel requested"
            ),
        )

    def release_task(self, img_name: str, token: str) -> Json:
        """Hand a task back (worker shutdown): pending again, due now, no attempt used.

        If the client asked to cancel it, the task is cancelled instead.
        """

        def build(row: StatusRow, actor: Actor) -> NewEvent:
            if lifecycle.release_event(row.cancel_requested) is EventType.CANCELLED:
                return self._event(
                    row, img_name, EventType.CANCELLED, {}, actor, reason="cancel requested"
                )
            data = ev.retry_scheduled(None, self.clock(), row.attempts, released=True)
            return self._event(
                row, img_name, EventType.RETRY_SCHEDULED, data, actor, reason="worker shutdown"
            )

        return self._finish(img_name, token, build)

    def _failure_event(self, row: StatusRow, error: Json, actor: Actor) -> NewEvent:
        kind = lifecycle.failure_event(
            row.attempts,
            self.policy.max_attempts,
            error["retryable"],
            cancel_requested=row.cancel_requested,
        )
        if kind is EventType.CANCELLED:
            return self._event(
                row, row.img_name, kind, {}, actor, reason="cancel requested; " + error["code"]
            )
        if kind is EventType.RETRY_SCHEDULED:
            delay = lifecycle.backoff_seconds(
                row.attempts,
                self.policy.backoff_base_seconds,
                self.policy.backoff_cap_seconds,
                self.jitter(),
            )
            not_before = self.clock() + timedelta(seconds=delay)
            data = ev.retry_scheduled(error, not_before, row.attempts, released=False)
        else:
            data = ev.failed(error, row.attempts)
        return self._event(row, row.img_name, kind, data, actor, reason=error["code"])

    # --- the reaper -----------------------------------------------------------

    def reap_expired_leases(self, limit: int = 100) -> int:
        """Turn expired leases into a retry, a failure or a cancel. Returns how many.

        Each task is its own transaction; one that a worker finished in the
        meantime is left alone.
        """
        with self.db.read() as conn:
            expired = list(
                conn.execute(
                    select(leases.c.img_name, leases.c.lease_token)
                    .where(leases.c.expires_at <= self.clock())
                    .order_by(leases.c.expires_at)
                    .limit(limit)
                )
            )
        actor = Actor("system:reaper")
        reaped = 0
        for img_name, token in expired:

            def work(conn: Connection, img_name: str = img_name, token: str = token) -> bool:
                current = projector.load_current(conn, img_name)  # the lock order: row first
                lease = conn.execute(
                    select(leases.c.lease_token, leases.c.expires_at).where(
                        leases.c.img_name == img_name
                    )
                ).first()
                if lease is None or lease.lease_token != token or lease.expires_at > self.clock():
                    return False
                row = current.row
                if row is not None and row.video_status is Status.PROCESSING:
                    if row.cancel_requested:
                        new = self._event(
                            row, img_name, EventType.CANCELLED, {}, actor, reason="lease expired"
                        )
                    else:
                        error = ev.error_payload(
                            "lease.expired",
                            "the worker stopped heartbeating before its lease ran out",
                            True,
                        )
                        new = self._failure_event(row, error, actor)
                    self._append(conn, current, [new])
                conn.execute(delete(leases).where(leases.c.img_name == img_name))
                return True

            if self._in_transaction(work):
                reaped += 1
        return reaped
