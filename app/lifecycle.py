"""The life of a video as a pure state machine.

Everything else asks this module what is allowed. It does no I/O and knows
nothing of storage or HTTP: statuses, event names, the transition table and
the decisions built on it.
"""

from __future__ import annotations

from enum import StrEnum

from app.errors import InvalidTransition, VideoExists, VideoInProgress


class Status(StrEnum):
    NONE = "none"
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    REQUESTED = "VideoRequested"
    PROCESSING_STARTED = "VideoProcessingStarted"
    COMPLETED = "VideoCompleted"
    RETRY_SCHEDULED = "VideoRetryScheduled"
    FAILED = "VideoFailed"
    CANCEL_REQUESTED = "VideoCancelRequested"
    CANCELLED = "VideoCancelled"
    RETRY_REQUESTED = "VideoRetryRequested"
    DELETED = "VideoDeleted"


S = Status
E = EventType

#: event type -> {from status: to status}. A pair that is absent is refused.
TRANSITIONS: dict[EventType, dict[Status, Status]] = {
    E.REQUESTED: {
        S.NONE: S.PENDING,
        S.FAILED: S.PENDING,
        S.CANCELLED: S.PENDING,
        S.COMPLETED: S.PENDING,  # only with `regenerate`; see transition()
    },
    E.PROCESSING_STARTED: {S.PENDING: S.PROCESSING},
    E.COMPLETED: {S.PROCESSING: S.COMPLETED},
    E.RETRY_SCHEDULED: {S.PROCESSING: S.PENDING},
    E.FAILED: {S.PROCESSING: S.FAILED},
    E.CANCEL_REQUESTED: {S.PROCESSING: S.PROCESSING},
    E.CANCELLED: {S.PENDING: S.CANCELLED, S.PROCESSING: S.CANCELLED},
    E.RETRY_REQUESTED: {S.FAILED: S.PENDING, S.CANCELLED: S.PENDING},
    E.DELETED: {S.COMPLETED: S.NONE, S.FAILED: S.NONE, S.CANCELLED: S.NONE},
}

ACTIVE = frozenset({S.PENDING, S.PROCESSING})


def transition(
    img_name: str, current: Status, event_type: EventType, *, regenerate: bool = False
) -> Status:
    """Return the status that `event_type` leads to from `current`.

    Raises `VideoInProgress` for a request while pending or processing,
    `VideoExists` for a request on a completed video without `regenerate`,
    and `InvalidTransition` (naming from and to) for every other refusal.
    """
    allowed = TRANSITIONS[event_type]
    if event_type is E.REQUESTED:
        if current in ACTIVE:
            raise VideoInProgress(
                f"video for {img_name!r} is already {current.value}",
                img_name=img_name,
                video_status=current.value,
            )
        if current is S.COMPLETED and not regenerate:
            raise VideoExists(
                f"video for {img_name!r} is already completed; "
                "send regenerate: true to make a new one",
                img_name=img_name,
                video_status=current.value,
            )
    target = allowed.get(current)
    if target is None:
        wanted = _intended_target(event_type)
        raise InvalidTransition(
            f"cannot apply {event_type.value} to video for {img_name!r}: "
            f"{current.value} -> {wanted} is not allowed",
            img_name=img_name,
            video_status=current.value,
            event_type=event_type.value,
        )
    return target


def _intended_target(event_type: EventType) -> str:
    targets = set(TRANSITIONS[event_type].values())
    return targets.pop().value if len(targets) == 1 else "?"


def cancel_event(img_name: str, current: Status, cancel_requested: bool) -> EventType | None:
    """Decide what a client's cancel means now.

    A pending video is cancelled at once; a processing one gets a cancel
    request that its worker acts on. A second cancel of a processing video
    whose cancel is already requested changes nothing (returns None).
    Anything else raises `InvalidTransition`.
    """
    if current is S.PROCESSING:
        return None if cancel_requested else E.CANCEL_REQUESTED
    transition(img_name, current, E.CANCELLED)
    return E.CANCELLED


def failure_event(
    attempts: int, max_attempts: int, retryable: bool, *, cancel_requested: bool = False
) -> EventType:
    """A failed attempt is retried while it is retryable and attempts are left.

    If the client asked to cancel, a retryable failure (or an expired lease)
    ends in `VideoCancelled` instead: the attempt has stopped, and a retry
    would run the video the client no longer wants. A failure that is not
    retryable stays `VideoFailed`, with its error.
    """
    if retryable and cancel_requested:
        return E.CANCELLED
    if retryable and attempts < max_attempts:
        return E.RETRY_SCHEDULED
    return E.FAILED


def release_event(cancel_requested: bool) -> EventType:
    """A worker hands its task back unfinished (shutdown): queued again, unless
    the client asked to cancel, in which case the stop is the cancel."""
    return E.CANCELLED if cancel_requested else E.RETRY_SCHEDULED


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff for the retry after `attempt` (1-based).

    `jitter` is a number in [0, 1) supplied by the caller, so this stays pure.
    The delay is base * 2**(attempt-1), capped, then spread over its upper half.
    """
    delay: float = min(cap, base * 2 ** max(0, attempt - 1))
    return delay / 2 + (delay / 2) * jitter
