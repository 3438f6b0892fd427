"""Commands end to end through the service: leases, fencing, retries, the reaper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.api.views import status_body
from app.db.engine import Database
from app.errors import InvalidTransition, LeaseLost, VideoExists, VideoInProgress
from app.events import store
from app.lifecycle import EventType
from app.service import Actor, Policy, VideoService, VideoState
from app.service.queries import VideoQueries

ME = Actor("tester", correlation_id="req-1")


class Clock:
    """A settable service clock. It starts a minute ahead of the database's,
    so that videos requested now (stamped by the database clock) are due."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(database: Database, clock: Clock) -> VideoService:
    policy = Policy(
        max_attempts=3, lease_seconds=30, backoff_base_seconds=10, backoff_cap_seconds=100
    )
    return VideoService(database, policy, clock=clock, jitter=lambda: 0.5)


def _types(database: Database, img: str) -> list[str]:
    with database.read() as conn:
        return [e.event_type.value for e in store.read_stream(conn, img)]


def test_request_claim_complete(
    svc: VideoService, queries: VideoQueries, database: Database
) -> None:
    answer = svc.request_video("a.png", "role_card", ME, prompt="zoom")
    assert isinstance(answer, VideoState) and answer.row.video_status == "pending"
    task = svc.claim_task("w1")
    assert task is not None and (task.img_name, task.attempt, task.generation) == ("a.png", 1, 1)
    assert svc.claim_task("w2") is None  # nothing else is due
    body = status_body(svc.complete_task("a.png", task.lease_token, "a.png.g1.mp4"))
    assert body["has_video"] and body["video_status"] == "completed"
    assert _types(database, "a.png") == [
        "VideoRequested",
        "VideoProcessingStarted",
        "VideoCompleted",
    ]
    with database.read() as conn:
        actors = [e.actor for e in store.read_stream(conn, "a.png")]
        correlation = store.read_stream(conn, "a.png")[0].correlation_id
    assert actors == ["tester", "worker:w1", "worker:w1"]
    assert correlation == "req-1"


def test_refusals_write_nothing(svc: VideoService, database: Database) -> None:
    svc.request_video("a.png", "scene", ME)
    with pytest.raises(VideoInProgress):
        svc.request_video("a.png", "scene", ME)
    with pytest.raises(InvalidTransition):
        svc.retry_video("a.png", ME)
    with pytest.raises(InvalidTransition):
        svc.delete_video("a.png", ME)
    task = svc.claim_task("w1")
    assert task is not None
    svc.complete_task("a.png", task.lease_token, "f.mp4")
    with pytest.raises(VideoExists):
        svc.request_video("a.png", "scene", ME)
    assert len(_types(database, "a.png")) == 3


def test_the_oldest_due_pending_video_is_claimed_first(svc: VideoService, clock: Clock) -> None:
    for name in ("first.png", "second.png", "third.png"):
        svc.request_video(name, "scene", ME)
        clock.advance(1)
    order = []
    while (task := svc.claim_task("w")) is not None:
        order.append(task.img_name)
    assert order == ["first.png", "second.png", "third.png"]


def test_claims_can_be_limited_to_source_types(svc: VideoService) -> None:
    svc.request_video("a.png", "scene", ME)
    svc.request_video("b.png", "upload", ME)
    task = svc.claim_task("w", source_types=["upload"])
    assert task is not None and task.img_name == "b.png"
    assert svc.claim_task("w", source_types=["upload"]) is None


def test_a_stale_lease_token_is_fenced_off(
    svc: VideoService, clock: Clock, database: Database
) -> None:
    svc.request_video("a.png", "scene", ME)
    first = svc.claim_task("w1")
    assert first is not None
    clock.advance(31)  # the lease ran out
    assert svc.reap_expired_leases() == 1
    clock.advance(100)  # past the backoff
    second = svc.claim_task("w2")
    assert second is not None and second.attempt == 2
    with pytest.raises(LeaseLost):
        svc.complete_task("a.png", first.lease_token, "zombie.mp4")
    with pytest.raises(LeaseLost):
        svc.heartbeat("a.png", first.lease_token, 0.5)
    body = status_body(svc.complete_task("a.png", second.lease_token, "good.mp4"))
    assert body["video_filename"] == "good.mp4"
    assert _types(database, "a.png").count("VideoCompleted") == 1


def test_an_expired_lease_is_lost_even_before_the_reaper_runs(
    svc: VideoService, clock: Clock
) -> None:
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    clock.advance(31)
    with pytest.raises(LeaseLost):
        svc.complete_task("a.png", task.lease_token, "late.mp4")


def test_heartbeats_extend_the_lease_and_carry_progress_and_cancel(
    svc: VideoService, clock: Clock, queries: VideoQueries
) -> None:
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    clock.advance(20)
    beat = svc.heartbeat("a.png", task.lease_token, 0.25)
    assert beat.lease_expires_at == clock.now + timedelta(seconds=30)
    assert not beat.cancel_requested
    assert queries.status("a.png").progress == 0.25
    clock.advance(20)  # past the first expiry, within the extended one
    assert svc.reap_expired_leases() == 0
    answer = status_body(svc.cancel_video("a.png", ME))
    assert answer["cancel_requested"] and answer["video_status"] == "processing"
    assert svc.heartbeat("a.png", task.lease_token).cancel_requested
    body = status_body(svc.acknowledge_cancel("a.png", task.lease_token))
    assert body["video_status"] == "cancelled"


def test_retryable_failures_back_off_until_attempts_run_out(
    svc: VideoService, clock: Clock, database: Database
) -> None:
    svc.request_video("a.png", "scene", ME)
    delays = []
    for attempt in (1, 2, 3):
        task = svc.claim_task("w1")
        assert task is not None and task.attempt == attempt
        body = status_body(
            svc.fail_task("a.png", task.lease_token, "generator.timeout", "too slow", True)
        )
        if attempt < 3:
            assert body["video_status"] == "pending"
            assert body["error"]["code"] == "generator.timeout"
            not_before = datetime.fromisoformat(body["not_before"])
            delays.append((not_before - clock.now).total_seconds())
            assert svc.claim_task("w1") is None  # not due yet
            clock.advance(delays[-1] + 0.001)
    assert body["video_status"] == "failed" and body["attempts"] == 3
    assert delays == [7.5, 15.0]  # base 10 s doubling, jitter pinned at 0.5
    assert _types(database, "a.png").count("VideoRetryScheduled") == 2


def test_a_non_retryable_failure_fails_at_once_and_can_be_retried(svc: VideoService) -> None:
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    body = status_body(
        svc.fail_task("a.png", task.lease_token, "image.not_found", "no such image", False)
    )
    assert body["video_status"] == "failed"
    answer = status_body(svc.retry_video("a.png", ME, reason="image uploaded"))
    assert (answer["video_status"], answer["attempts"], answer["generation"]) == (
        "pending",
        0,
        1,
    )


def test_the_reaper_retries_fails_or_cancels_expired_leases(
    svc: VideoService, clock: Clock, database: Database
) -> None:
    svc.request_video("retry.png", "scene", ME)
    svc.request_video("cancel.png", "scene", ME)
    a = svc.claim_task("w")
    b = svc.claim_task("w")
    assert a is not None and b is not None
    svc.cancel_video("cancel.png", ME)
    clock.advance(31)
    assert svc.reap_expired_leases() == 2
    with database.read() as conn:
        retry = store.read_stream(conn, "retry.png")[-1]
        cancel = store.read_stream(conn, "cancel.png")[-1]
    assert retry.event_type is EventType.RETRY_SCHEDULED and retry.actor == "system:reaper"
    assert retry.data["error"]["code"] == "lease.expired"
    assert cancel.event_type is EventType.CANCELLED


def test_released_tasks_go_back_without_using_an_attempt(svc: VideoService) -> None:
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    body = status_body(svc.release_task("a.png", task.lease_token))
    assert (body["video_status"], body["attempts"]) == ("pending", 0)
    again = svc.claim_task("w2")
    assert again is not None and again.attempt == 1


def test_status_as_of_a_version_or_time_folds_the_log(
    svc: VideoService, queries: VideoQueries, clock: Clock
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    svc.complete_task("a.png", task.lease_token, "a.mp4")
    assert status_body(queries.status_as_of("a.png", version=1))["video_status"] == "pending"
    assert status_body(queries.status_as_of("a.png", version=2))["video_status"] == "processing"
    assert status_body(queries.status_as_of("a.png", at=before))["version"] == 0
    now = status_body(queries.status("a.png"))
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert status_body(queries.status_as_of("a.png", at=later)) == {
        **now,
        "progress": None,
    }


def test_the_lease_token_never_reaches_the_log(svc: VideoService, queries: VideoQueries) -> None:
    """Every reader sees the log; a token there would let anyone write a worker's result."""
    svc.request_video("a.png", "scene", ME)
    task = svc.claim_task("w1")
    assert task is not None
    page = queries.events(after=None, limit=100, filters=store.FeedFilter())
    assert task.lease_token not in repr(page.items)
    assert task.lease_token not in repr(queries.history("a.png", limit=100, cursor=None).items)
