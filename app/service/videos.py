"""Client commands: request, cancel, retry and delete a video."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from app import lifecycle
from app.db import idempotency, leases
from app.db.idempotency import Remembered
from app.db.unit_of_work import UnitOfWork
from app.errors import IdempotencyKeyReused
from app.events import types as ev
from app.events.types import Json
from app.lifecycle import EventType, Status
from app.projections import projector
from app.projections.status import StatusRow
from app.service.base import Actor, CommandBase
from app.service.results import Idempotency, Outcome, Replayed, VideoState

#: How long an Idempotency-Key's answer is replayed (the API promises at least 24 h).
IDEMPOTENCY_TTL = timedelta(hours=48)

#: `decide(row)` names the event a command appends and its payload, or None
#: for a command that changes nothing.
Decide = Callable[[StatusRow | None], tuple[EventType, Json] | None]


class VideoCommands(CommandBase):
    def request_video(
        self,
        img_name: str,
        source_type: str,
        actor: Actor,
        *,
        prompt: str | None = None,
        params: Json | None = None,
        regenerate: bool = False,
        generator: str | None = None,
        idem: Idempotency | None = None,
    ) -> Outcome:
        """Append `VideoRequested`, for `generator` or the default one.
        Raises `ValidationFailed` (an unknown generator), `VideoInProgress`,
        `VideoExists`, `IdempotencyKeyReused`; returns the new state (pending)."""
        chosen = self.policy.generators.resolve(generator)
        data = ev.requested(source_type, prompt, params or {}, regenerate, chosen)
        return self._client_write(
            img_name, actor, idem, lambda _: (EventType.REQUESTED, data), regenerate=regenerate
        )

    def cancel_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Outcome:
        """Cancel a pending video at once, or flag a processing one for its worker.

        A second cancel of a processing video changes nothing. Raises
        `InvalidTransition` for any other status.
        """

        def decide(row: StatusRow | None) -> tuple[EventType, Json] | None:
            current = row.video_status if row is not None else Status.NONE
            requested = row.cancel_requested if row is not None else False
            wanted = lifecycle.cancel_event(img_name, current, requested)
            return (wanted, {}) if wanted is not None else None

        return self._client_write(img_name, actor, idem, decide, reason=reason)

    def retry_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Outcome:
        """Put a failed or cancelled video back to pending, attempts reset."""
        return self._client_write(
            img_name, actor, idem, lambda _: (EventType.RETRY_REQUESTED, {}), reason=reason
        )

    def delete_video(
        self,
        img_name: str,
        actor: Actor,
        *,
        reason: str | None = None,
        idem: Idempotency | None = None,
    ) -> Outcome:
        """Delete a completed, failed or cancelled video; the status becomes `none`.

        The video file is removed once the event has committed.
        """
        removed: list[str | None] = [None]

        def decide(row: StatusRow | None) -> tuple[EventType, Json]:
            removed[0] = row.video_filename if row is not None else None
            return EventType.DELETED, ev.deleted(removed[0])

        outcome = self._client_write(img_name, actor, idem, decide, reason=reason)
        if not isinstance(outcome, Replayed) and self.files is not None:
            self.files.remove(removed[0])
        return outcome

    def _client_write(
        self,
        img_name: str,
        actor: Actor,
        idem: Idempotency | None,
        decide: Decide,
        *,
        reason: str | None = None,
        regenerate: bool = False,
    ) -> Outcome:
        """A client command: lock, replay check, decide, append, remember the answer.

        The state machine has the last word on whether the event that
        `decide` names is allowed.
        """

        def work(uow: UnitOfWork) -> Outcome:
            # The row lock first (the lock order), then the replay check: a
            # twin request with the same key that waited behind this lock
            # finds the first one's answer.
            current = projector.load_current(uow.conn, img_name)
            if idem is not None:
                replay = self._replay(uow, img_name, idem)
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
                row = self._append(uow, current, new)
            state = (
                VideoState(row=row, progress=self._progress(uow, row))
                if row is not None
                else VideoState(row=StatusRow(img_name=img_name))
            )
            if idem is not None:
                status, body = idem.answer(state)
                answer = Remembered(idem.fingerprint, status, body, self.clock())
                idempotency.remember(uow.backend, uow.conn, img_name, idem.key, answer)
            return state

        return self._in_transaction(work)

    def _replay(self, uow: UnitOfWork, img_name: str, idem: Idempotency) -> Replayed | None:
        found = idempotency.find(uow.conn, img_name, idem.key)
        if found is None or found.created_at < self.clock() - IDEMPOTENCY_TTL:
            return None
        if found.fingerprint != idem.fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idem.key!r} was already used with a different request",
                img_name=img_name,
            )
        return Replayed(status=found.status, body=found.body)

    @staticmethod
    def _progress(uow: UnitOfWork, row: StatusRow) -> float | None:
        if row.video_status is not Status.PROCESSING:
            return None
        return leases.progress(uow.conn, row.img_name)
