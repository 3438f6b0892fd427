"""Worker commands (claim, heartbeat, complete, fail, cancelled, release) and the reaper.

Every worker write carries its lease token and is refused (`LeaseLost`)
once the lease is no longer current: fencing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

from app import lifecycle
from app.db import leases, queue
from app.db.unit_of_work import UnitOfWork
from app.errors import LeaseLost
from app.events import types as ev
from app.events.types import Json, NewEvent
from app.lifecycle import EventType, Status
from app.projections import projector
from app.projections.projector import Current
from app.projections.status import StatusRow
from app.service.base import Actor, CommandBase
from app.service.results import Heartbeat, Task, VideoState

REAPER = Actor("system:reaper")


class TaskCommands(CommandBase):
    def claim_task(
        self,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        source_types: list[str] | None = None,
        generators: list[str] | None = None,
    ) -> Task | None:
        """Claim the oldest due pending video (of `generators`, when named), or
        return None if nothing is due.

        Appends `VideoProcessingStarted` at the version read, so a conflict
        means another worker won; the claim then looks again.
        """
        seconds = lease_seconds or self.policy.lease_seconds
        actor = Actor(f"worker:{worker_id}")

        def work(uow: UnitOfWork) -> Task | None:
            now = self.clock()
            img_name = queue.lock_oldest_due(uow.backend, uow.conn, now, source_types, generators)
            if img_name is None:
                return None
            current = projector.load_current(uow.conn, img_name)  # the row this already holds
            row = current.row
            assert row is not None
            token = secrets.token_hex(16)
            expires = now + timedelta(seconds=seconds)
            attempt = row.attempts + 1
            data = ev.processing_started(worker_id, expires, attempt)
            started = self._event(row, img_name, EventType.PROCESSING_STARTED, data, actor)
            row = self._append(uow, current, started)
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
            leases.grant(uow.backend, uow.conn, lease)
            return Task(
                img_name=img_name,
                source_type=row.source_type,
                generator=row.generator or ev.FIRST_GENERATOR,
                prompt=row.prompt,
                params=row.params or dict(ev.DEFAULT_PARAMS),
                generation=row.generation,
                attempt=attempt,
                lease_token=token,
                lease_expires_at=expires,
            )

        return self._in_transaction(work)

    def _fence(
        self, uow: UnitOfWork, img_name: str, token: str
    ) -> tuple[Current, StatusRow, Actor, leases.Lease]:
        """The row of a task whose lease `token` is still current (as read, and
        as a row), the worker that holds it and the lease. Raises `LeaseLost`
        otherwise (fencing)."""
        current = projector.load_current(uow.conn, img_name)  # the lock order: row first
        lease = leases.of(uow.conn, img_name)
        if (
            lease is None
            # Bytes: compare_digest refuses a str with non-ASCII characters,
            # and a token is whatever the caller sent.
            or not secrets.compare_digest(lease.token.encode(), token.encode())
            or lease.expires_at <= self.clock()
        ):
            raise LeaseLost(
                f"the lease on {img_name!r} is no longer yours; nothing was recorded",
                img_name=img_name,
            )
        row = current.row
        if row is None or row.video_status is not Status.PROCESSING:
            raise LeaseLost(f"{img_name!r} is no longer processing", img_name=img_name)
        return current, row, Actor(f"worker:{lease.worker_id}"), lease

    def heartbeat(self, img_name: str, token: str, progress: float | None = None) -> Heartbeat:
        """Extend the lease and record progress (0-1).

        Tells the worker whether a cancel was requested. Raises `LeaseLost`.
        """

        def work(uow: UnitOfWork) -> Heartbeat:
            _, row, _, lease = self._fence(uow, img_name, token)
            now = self.clock()
            expires = now + timedelta(seconds=lease.lease_seconds)
            leases.extend(uow.conn, img_name, expires, now, progress)
            return Heartbeat(lease_expires_at=expires, cancel_requested=row.cancel_requested)

        return self._in_transaction(work)

    def _finish(
        self, img_name: str, token: str, build: Callable[[StatusRow, Actor], NewEvent]
    ) -> VideoState:
        """A fenced worker write: one event, then the lease is dropped."""

        def work(uow: UnitOfWork) -> VideoState:
            current, row, actor, _ = self._fence(uow, img_name, token)
            row = self._append(uow, current, build(row, actor))
            leases.drop(uow.conn, img_name)
            return VideoState(row=row)

        return self._in_transaction(work)

    def complete_task(
        self, img_name: str, token: str, video_filename: str, *, metadata: Json | None = None
    ) -> VideoState:
        """Record the finished video. Raises `LeaseLost` if the lease is not current.

        The video it replaces (a regeneration) is removed once this commits.
        """
        data = ev.completed(video_filename, metadata or {})
        replaced: list[str | None] = [None]

        def build(row: StatusRow, actor: Actor) -> NewEvent:
            replaced[0] = row.video_filename if row.video_filename != video_filename else None
            return self._event(row, img_name, EventType.COMPLETED, data, actor)

        state = self._finish(img_name, token, build)
        if self.files is not None:
            self.files.remove(replaced[0])
        return state

    def fail_task(
        self, img_name: str, token: str, error_code: str, error_message: str, retryable: bool
    ) -> VideoState:
        """Record a failed attempt: retried with backoff while it is retryable and
        attempts are left, else `VideoFailed`. Raises `LeaseLost`."""
        error = ev.error_payload(error_code, error_message, retryable)
        return self._finish(
            img_name, token, lambda row, actor: self._failure_event(row, error, actor)
        )

    def acknowledge_cancel(self, img_name: str, token: str) -> VideoState:
        """The worker stopped after a cancel request: append `VideoCancelled`."""
        return self._finish(
            img_name, token, lambda row, actor: self._cancelled(row, actor, "cancel requested")
        )

    def release_task(self, img_name: str, token: str) -> VideoState:
        """Hand a task back (worker shutdown): pending again, due now, no attempt used.

        If the client asked to cancel it, the task is cancelled instead.
        """

        def build(row: StatusRow, actor: Actor) -> NewEvent:
            if lifecycle.release_event(row.cancel_requested) is EventType.CANCELLED:
                return self._cancelled(row, actor, "cancel requested")
            data = ev.retry_scheduled(None, self.clock(), row.attempts, released=True)
            return self._event(
                row, img_name, EventType.RETRY_SCHEDULED, data, actor, reason="worker shutdown"
            )

        return self._finish(img_name, token, build)

    def _cancelled(self, row: StatusRow, actor: Actor, why: str) -> NewEvent:
        """The attempt stopped and the client had asked to cancel: `VideoCancelled`."""
        return self._event(row, row.img_name, EventType.CANCELLED, {}, actor, reason=why)

    def _failure_event(self, row: StatusRow, error: Json, actor: Actor) -> NewEvent:
        """A stopped attempt's event, as `lifecycle.failure_event` decides it."""
        kind = lifecycle.failure_event(
            row.attempts,
            self.policy.max_attempts,
            error["retryable"],
            cancel_requested=row.cancel_requested,
        )
        if kind is EventType.CANCELLED:
            return self._cancelled(row, actor, "cancel requested; " + error["code"])
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
            expired = leases.expired(conn, self.clock(), limit)
        reaped = 0
        for img_name, token in expired:

            def work(uow: UnitOfWork, img_name: str = img_name, token: str = token) -> bool:
                current = projector.load_current(uow.conn, img_name)  # the lock order: row first
                lease = leases.of(uow.conn, img_name)
                if lease is None or lease.token != token or lease.expires_at > self.clock():
                    return False
                row = current.row
                if row is not None and row.video_status is Status.PROCESSING:
                    # An expired lease is a retryable failure; with a cancel
                    # requested, lifecycle.failure_event makes it the cancel.
                    error = ev.error_payload(
                        "lease.expired",
                        "the worker stopped heartbeating before its lease ran out",
                        True,
                    )
                    self._append(uow, current, self._failure_event(row, error, REAPER))
                leases.drop(uow.conn, img_name)
                return True

            if self._in_transaction(work):
                reaped += 1
        return reaped
