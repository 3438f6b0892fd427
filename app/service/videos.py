"""Client commands: request, cancel, retry and delete a video."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from app import lifecycle
from app.db import idempotency, leases
from app.db.idempotency import Remembered
from app.db.unit_of_work import UnitOfWork
from app.errors import ConcurrencyConflict, IdempotencyKeyReused, TransitionRefused
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
        if not regenerate and (first := self._first_request(img_name, data, actor, idem)):
            return first
        return self._client_write(
            img_name, actor, idem, lambda _: (EventType.REQUESTED, data), regenerate=regenerate
        )

    def _first_request(
        self, img_name: str, data: Json, actor: Actor, idem: Idempotency | None
    ) -> VideoState | None:
        """The common case in one round trip: a request for an image that has
        no events yet, by a caller who may make it, written by one statement
        (`projector.append_first`). None where that statement wrote nothing
        (the image has events, the caller is refused, a twin won, or the
        database cannot): the checked way then decides, and says why.

        The decision is still the state machine's: it allows the request
        from `none`, and the statement writes only where the image has no
        row, which is `none` at version 0."""
        admitted = actor.admitted()
        if admitted is None or not self.db.backend.writes_alone:
            return None
        new = self._event(
            None,
            img_name,
            EventType.REQUESTED,
            data,
            actor,
            idempotency_key=idem.key if idem else None,
        )
        keep = None
        if idem is not None:
            now = self.clock()

            def keep(row: StatusRow) -> idempotency.Keep:
                status, body = idem.answer(VideoState(row=row, progress=None))
                answer = Remembered(idem.fingerprint, status, body, now)
                return idempotency.Keep(img_name, idem.key, answer, now - IDEMPOTENCY_TTL)

        try:
            with self.db.write_alone() as conn:
                done = projector.append_first(conn, img_name, new, admitted, keep)
        except ConcurrencyConflict:
            return None  # a twin wrote the stream's first event first
        if done is None:
            return None
        event, row = done
        self._appended(event)
        if self._on_append is not None:
            self._on_append([event])
        return VideoState(row=row, progress=None)

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
            who = actor.checked(uow.conn)  # an API caller's key, on this connection
            # The row lock first (the lock order), and with it the answer kept
            # under the key, if any: one round trip.
            current = projector.load_current(uow.conn, img_name, idem.key if idem else None)
            if idem is not None and (replay := self._replay(img_name, idem, current.remembered)):
                return replay
            try:
                decision = decide(current.row)
                new = (
                    self._event(
                        current.row,
                        img_name,
                        *decision,
                        who,
                        reason=reason,
                        idempotency_key=idem.key if idem else None,
                        regenerate=regenerate,
                    )
                    if decision is not None
                    else None
                )
            except TransitionRefused:
                # A twin with the same key may have committed while this waited
                # for the row lock, unseen by the read: its answer is the reply.
                found = idempotency.find(uow.conn, img_name, idem.key) if idem else None
                if idem is not None and (replay := self._replay(img_name, idem, found)):
                    return replay
                raise
            answer = _Answer(self, uow, idem)
            row = current.row
            if new is not None:
                row = self._append(uow, current, new, answer.keep if idem else None)
            row = row or StatusRow(img_name=img_name)
            if new is None and idem is not None:
                idempotency.keep(uow.backend, uow.conn, answer.keep(row))
            return answer.state(row)

        return self._in_transaction(work)

    def _replay(
        self, img_name: str, idem: Idempotency, found: Remembered | None
    ) -> Replayed | None:
        """The first answer to replay, from what is kept under the key (an
        expired one is not). Raises `IdempotencyKeyReused` if it was kept for
        a different request."""
        if found is None or found.created_at < self.clock() - IDEMPOTENCY_TTL:
            return None
        if found.fingerprint != idem.fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idem.key!r} was already used with a different request",
                img_name=img_name,
            )
        return Replayed(status=found.status, body=found.body)


class _Answer:
    """What a client command answers with, and keeps under its key: made
    once per row (a processing row's progress is one more read)."""

    def __init__(self, commands: VideoCommands, uow: UnitOfWork, idem: Idempotency | None) -> None:
        self.commands, self.uow, self.idem = commands, uow, idem
        self._states: dict[int, VideoState] = {}

    def state(self, row: StatusRow) -> VideoState:
        if row.version not in self._states:
            progress = (
                leases.progress(self.uow.conn, row.img_name)
                if row.video_status is Status.PROCESSING
                else None
            )
            self._states[row.version] = VideoState(row=row, progress=progress)
        return self._states[row.version]

    def keep(self, row: StatusRow) -> idempotency.Keep:
        """The answer to `row`, as kept under the key (which must be given)."""
        assert self.idem is not None
        status, body = self.idem.answer(self.state(row))
        answer = Remembered(self.idem.fingerprint, status, body, self.commands.clock())
        expired_before = answer.created_at - IDEMPOTENCY_TTL
        return idempotency.Keep(row.img_name, self.idem.key, answer, expired_before)
