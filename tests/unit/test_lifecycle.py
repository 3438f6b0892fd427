"""The state machine, table-driven over every (status, event) pair."""

from __future__ import annotations

import itertools

import pytest

from app.errors import InvalidTransition, VideoExists, VideoInProgress
from app.lifecycle import (
    EventType,
    Status,
    backoff_seconds,
    cancel_event,
    failure_event,
    release_event,
    transition,
)

S, E = Status, EventType

#: The whole life of a video: (event, from) -> to. Everything else is refused.
ALLOWED = {
    (E.REQUESTED, S.NONE): S.PENDING,
    (E.REQUESTED, S.FAILED): S.PENDING,
    (E.REQUESTED, S.CANCELLED): S.PENDING,
    (E.PROCESSING_STARTED, S.PENDING): S.PROCESSING,
    (E.COMPLETED, S.PROCESSING): S.COMPLETED,
    (E.RETRY_SCHEDULED, S.PROCESSING): S.PENDING,
    (E.FAILED, S.PROCESSING): S.FAILED,
    (E.CANCEL_REQUESTED, S.PROCESSING): S.PROCESSING,
    (E.CANCELLED, S.PENDING): S.CANCELLED,
    (E.CANCELLED, S.PROCESSING): S.CANCELLED,
    (E.RETRY_REQUESTED, S.FAILED): S.PENDING,
    (E.RETRY_REQUESTED, S.CANCELLED): S.PENDING,
    (E.DELETED, S.COMPLETED): S.NONE,
    (E.DELETED, S.FAILED): S.NONE,
    (E.DELETED, S.CANCELLED): S.NONE,
}

ALL_PAIRS = list(itertools.product(E, S))


@pytest.mark.parametrize(("event", "current"), ALL_PAIRS, ids=lambda v: v.value)
def test_every_pair_is_allowed_or_refused_as_designed(event: EventType, current: Status) -> None:
    expected = ALLOWED.get((event, current))
    if event is E.REQUESTED and current is S.COMPLETED:
        with pytest.raises(VideoExists):
            transition("cat.png", current, event)
        assert transition("cat.png", current, event, regenerate=True) is S.PENDING
        return
    if expected is not None:
        assert transition("cat.png", current, event) is expected
        return
    refused = VideoInProgress if event is E.REQUESTED else InvalidTransition
    with pytest.raises(refused) as info:
        transition("cat.png", current, event)
    assert "cat.png" in info.value.detail
    if refused is InvalidTransition:
        assert current.value in info.value.detail  # the message names from and to


@pytest.mark.parametrize("current", [S.PENDING, S.PROCESSING])
def test_a_request_while_active_is_in_progress_even_with_regenerate(current: Status) -> None:
    with pytest.raises(VideoInProgress, match="already " + current.value):
        transition("cat.png", current, E.REQUESTED, regenerate=True)


@pytest.mark.parametrize(
    ("current", "cancel_requested", "expected"),
    [
        (S.PENDING, False, E.CANCELLED),
        (S.PROCESSING, False, E.CANCEL_REQUESTED),
        (S.PROCESSING, True, None),
    ],
)
def test_cancel_decision(
    current: Status, cancel_requested: bool, expected: EventType | None
) -> None:
    assert cancel_event("cat.png", current, cancel_requested) is expected


@pytest.mark.parametrize("current", [S.NONE, S.COMPLETED, S.FAILED, S.CANCELLED])
def test_cancel_is_refused_when_nothing_runs(current: Status) -> None:
    with pytest.raises(InvalidTransition):
        cancel_event("cat.png", current, False)


@pytest.mark.parametrize(
    ("attempts", "retryable", "expected"),
    [
        (1, True, E.RETRY_SCHEDULED),
        (2, True, E.RETRY_SCHEDULED),
        (3, True, E.FAILED),
        (1, False, E.FAILED),
    ],
)
def test_failure_retries_only_while_attempts_are_left(
    attempts: int, retryable: bool, expected: EventType
) -> None:
    assert failure_event(attempts, 3, retryable) is expected


@pytest.mark.parametrize(
    ("attempts", "retryable", "expected"),
    [
        (1, True, E.CANCELLED),
        (3, True, E.CANCELLED),
        (1, False, E.FAILED),
    ],
)
def test_a_failure_after_a_cancel_request_is_not_retried(
    attempts: int, retryable: bool, expected: EventType
) -> None:
    assert failure_event(attempts, 3, retryable, cancel_requested=True) is expected


def test_a_released_task_is_queued_again_unless_a_cancel_was_requested() -> None:
    assert release_event(False) is E.RETRY_SCHEDULED
    assert release_event(True) is E.CANCELLED


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    lows = [backoff_seconds(a, 2.0, 60.0, 0.0) for a in range(1, 8)]
    highs = [backoff_seconds(a, 2.0, 60.0, 0.999) for a in range(1, 8)]
    assert lows[:4] == [1.0, 2.0, 4.0, 8.0]
    assert all(h <= 60.0 for h in highs)
    assert highs[-1] > 59.0
    assert all(lo < hi for lo, hi in zip(lows, highs, strict=True))
