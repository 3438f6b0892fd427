"""What every command shares: policy, actors, the unit of work and its retries.

A command is one unit of work: lock and read the image's row, decide with
the state machine, append, project, commit. One that loses a race is
decided again, a bounded number of times; if the new decision is a
refusal, that refusal is the answer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Select

from app import lifecycle
from app.db.engine import Database
from app.db.unit_of_work import UnitOfWork, unit_of_work
from app.errors import ConcurrencyConflict, Unavailable, ValidationFailed
from app.events.types import FIRST_GENERATOR, Json, NewEvent, RecordedEvent
from app.keys import ADMITTED, ANONYMOUS, Access
from app.lifecycle import EventType, Status
from app.projections import projector
from app.projections.projector import Current, KeepOf
from app.projections.status import StatusRow
from app.video_files import VideoFiles

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a command is decided again after losing a race.
CONFLICT_RETRIES = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class GeneratorNames:
    """The generators a request may name (the generators file's), and the
    one a request that names none gets."""

    names: tuple[str, ...] = (FIRST_GENERATOR,)
    default: str = FIRST_GENERATOR

    def resolve(self, name: str | None) -> str:
        """`name`, or the default for None. Raises `ValidationFailed` for a
        name that is not configured, naming the known ones."""
        if name is None:
            return self.default
        if name not in self.names:
            known = ", ".join(self.names)
            message = f"unknown generator {name!r}; known: {known}"
            raise ValidationFailed(message, errors=[{"loc": ["body", "generator"], "msg": message}])
        return name


@dataclass(frozen=True)
class Policy:
    """Numbers that shape retries and leases, and the generators on offer."""

    max_attempts: int = 3
    lease_seconds: int = 60
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 300.0
    generators: GeneratorNames = GeneratorNames()


@dataclass(frozen=True)
class Actor:
    """Who causes an event: an API key's name, `worker:<id>` or `system:reaper`."""

    name: str
    correlation_id: str | None = None
    #: A caller's credentials, not yet checked (an API request's): a client
    #: command checks them itself, on its own connection and in its own
    #: statement where it can, and the event's actor is then the key's name.
    access: Access | None = None

    @classmethod
    def unchecked(cls, access: Access, correlation_id: str | None = None) -> Actor:
        """An API caller, named by its key once its command has checked it."""
        return cls(ANONYMOUS.name, correlation_id, access)

    def checked(self, conn: Connection) -> Actor:
        """This actor with its credentials checked on `conn` (raises
        `Unauthorized` or `Forbidden`); itself if it has none to check."""
        if self.access is None:
            return self
        return Actor(self.access.check(conn).name, self.correlation_id)

    def admitted(self) -> tuple[Select[Any], dict[str, Any]] | None:
        """How a one-statement write lets this actor in (`Access.admitted`)."""
        if self.access is None:
            return ADMITTED["named"], {"caller_actor": self.name}
        return self.access.admitted()


class CommandBase:
    """The plumbing of the commands of `app.lifecycle` over a `Database`.

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
        self.clock = clock
        self.jitter = jitter
        self._on_append = on_append

    def _in_transaction(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run `work` in a unit of work, again after a lost race."""
        for _ in range(CONFLICT_RETRIES):
            try:
                with unit_of_work(self.db) as uow:
                    result = work(uow)
            except ConcurrencyConflict:
                log.debug("concurrency conflict; deciding again")
                continue
            # Only now is the append visible to others: tell the listeners.
            if self._on_append is not None and uow.appended:
                self._on_append(uow.appended)
            return result
        raise Unavailable("too many concurrent writers on this image; try again")

    @staticmethod
    def _append(
        uow: UnitOfWork, current: Current, new: NewEvent, keep: KeepOf | None = None
    ) -> StatusRow:
        row = projector.append(uow, current, new, keep)
        CommandBase._appended(uow.appended[-1])
        return row

    @staticmethod
    def _appended(recorded: RecordedEvent) -> None:
        """Log an append (the listeners hear of it once it has committed)."""
        log.info(
            "appended %s",
            recorded.event_type.value,
            extra={
                "img_name": recorded.img_name,
                "event_type": recorded.event_type.value,
                "position": recorded.position,
                "version": recorded.version,
                "actor": recorded.actor,
            },
        )

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
