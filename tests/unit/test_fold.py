"""The pure fold and the upcasters, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.events import types as ev
from app.events.types import RecordedEvent
from app.events.upcasters import upcast, video_requested_v1_to_v2
from app.lifecycle import EventType, Status
from app.projections.status import StatusRow, apply, fold

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Stream:
    """Builds a stream of recorded events the way the store would."""

    def __init__(self, img_name: str = "cat.png") -> None:
        self.img_name = img_name
        self.events: list[RecordedEvent] = []
        self.status = Status.NONE

    def add(self, event_type: EventType, to: Status, data: dict[str, Any]) -> StatusRow:
        n = len(self.events) + 1
        self.events.append(
            RecordedEvent(
                position=100 + n,
                event_id=uuid.uuid4(),
                img_name=self.img_name,
                version=n,
                event_type=event_type,
                schema_version=ev.CURRENT_SCHEMA[event_type],
                from_status=self.status,
                to_status=to,
                data=data,
                actor="test",
                reason=None,
                correlation_id=None,
                idempotency_key=None,
                recorded_at=T0 + timedelta(seconds=n),
            )
        )
        self.status = to
        return fold(self.events, self.img_name)

    def request(self, regenerate: bool = False) -> StatusRow:
        return self.add(
            EventType.REQUESTED,
            Status.PENDING,
            ev.requested("scene", "zoom", {}, regenerate, "kenburns"),
        )

    def start(self, attempt: int) -> StatusRow:
        data = ev.processing_started("w1", T0 + timedelta(hours=1), attempt)
        return self.add(EventType.PROCESSING_STARTED, Status.PROCESSING, data)

    def complete(self, filename: str) -> StatusRow:
        return self.add(EventType.COMPLETED, Status.COMPLETED, ev.completed(filename, {}))


def test_a_full_life_is_folded_into_the_row() -> None:
    s = Stream()
    row = s.request()
    assert (row.video_status, row.generation, row.attempts) == (Status.PENDING, 1, 0)
    assert row.not_before == row.requested_at == T0 + timedelta(seconds=1)
    row = s.start(1)
    assert (row.video_status, row.attempts, row.not_before) == (Status.PROCESSING, 1, None)
    row = s.complete("cat.png.g1.mp4")
    assert row.has_video and row.video_filename == "cat.png.g1.mp4"
    assert (row.version, row.last_position) == (3, 103)


def test_a_regeneration_keeps_the_last_video_until_the_new_one_completes() -> None:
    s = Stream()
    s.request()
    s.start(1)
    s.complete("v1.mp4")
    row = s.request(regenerate=True)
    assert (row.video_status, row.generation, row.has_video, row.video_filename) == (
        Status.PENDING,
        2,
        True,
        "v1.mp4",
    )
    s.start(1)
    error = ev.error_payload("generator.crashed", "boom", False)
    row = s.add(EventType.FAILED, Status.FAILED, ev.failed(error, 1))
    assert row.has_video and row.video_filename == "v1.mp4"
    assert row.error_code == "generator.crashed"
    row = s.add(EventType.DELETED, Status.NONE, ev.deleted("v1.mp4"))
    assert (row.has_video, row.video_filename, row.error_code) == (False, None, None)
    assert row.generation == 2  # history is not forgotten


def test_a_retry_keeps_the_error_and_sets_not_before() -> None:
    s = Stream()
    s.request()
    s.start(1)
    error = ev.error_payload("generator.timeout", "slow", True)
    due = T0 + timedelta(minutes=5)
    row = s.add(
        EventType.RETRY_SCHEDULED,
        Status.PENDING,
        ev.retry_scheduled(error, due, 1, released=False),
    )
    assert (row.video_status, row.attempts, row.not_before) == (Status.PENDING, 1, due)
    assert (row.error_code, row.error_retryable) == ("generator.timeout", True)


def test_a_released_task_gives_its_attempt_back() -> None:
    s = Stream()
    s.request()
    s.start(1)
    row = s.add(
        EventType.RETRY_SCHEDULED,
        Status.PENDING,
        ev.retry_scheduled(None, T0, 1, released=True),
    )
    assert (row.attempts, row.error_code) == (0, None)


def test_cancel_request_then_cancel() -> None:
    s = Stream()
    s.request()
    s.start(1)
    row = s.add(EventType.CANCEL_REQUESTED, Status.PROCESSING, {})
    assert row.cancel_requested
    row = s.add(EventType.CANCELLED, Status.CANCELLED, {})
    assert (row.video_status, row.cancel_requested) == (Status.CANCELLED, False)
    row = s.add(EventType.RETRY_REQUESTED, Status.PENDING, {})
    assert (row.video_status, row.attempts, row.generation) == (Status.PENDING, 0, 1)


def test_apply_does_not_modify_its_input() -> None:
    s = Stream()
    before = s.request()
    snapshot = before.as_values()
    s.start(1)
    apply(before, s.events[-1])
    assert before.as_values() == snapshot


def test_an_empty_stream_folds_to_none() -> None:
    row = fold([], "never.png")
    assert (row.video_status, row.version, row.has_video) == (Status.NONE, 0, False)


def test_video_requested_v1_upcasts_to_v2_with_default_params() -> None:
    v1 = {"source_type": "scene", "prompt": None, "regenerate": False}
    assert video_requested_v1_to_v2(v1)["params"] == ev.DEFAULT_PARAMS
    assert upcast(EventType.REQUESTED, 1, v1)["params"] == ev.DEFAULT_PARAMS
    assert "params" not in v1  # stored payloads are never changed


def test_an_event_newer_than_the_code_stops_the_reader() -> None:
    with pytest.raises(ValueError, match="newer"):
        upcast(EventType.COMPLETED, 9, {})
