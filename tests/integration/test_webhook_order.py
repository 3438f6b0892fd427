"""Per image and endpoint, in order: each delivery waits behind the one
before it, and goes once that one succeeds or is given up; on both
databases, through the webhook use cases (no HTTP: outcomes are given)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from app.api.views import event_body
from app.db.engine import Database
from app.db.tables import webhook_deliveries
from app.service import Actor, VideoService
from app.service.webhook_urls import parse_networks
from app.service.webhooks import Claimed, Outcome, WebhookPolicy, WebhookService

OK = Outcome(204, 1.0)
GONE_FOR_GOOD = Outcome(500, 1.0, error="http 500")


@pytest.fixture
def hooks(database: Database) -> WebhookService:
    # One attempt, then `failed`: a failure gives the delivery up at once.
    policy = WebhookPolicy(allowed_networks=parse_networks("127.0.0.0/8"), schedule=(0.0,))
    return WebhookService(database, policy)


def _image_history(service: VideoService, img: str) -> None:
    """requested → processing → completed: three events of one image."""
    service.request_video(img, "scene", Actor("test"))
    task = service.claim_task("w1")
    assert task is not None and task.img_name == img
    service.complete_task(img, task.lease_token, f"{img}.mp4")


def _types(claimed: list[Claimed]) -> list[str]:
    return [json.loads(c.body)["type"] for c in claimed]


def test_an_image_s_next_delivery_goes_only_after_the_one_before(
    hooks: WebhookService, service: VideoService
) -> None:
    hooks.create("http://127.0.0.1:9/hook")
    _image_history(service, "a.png")
    _image_history(service, "b.png")
    assert hooks.fan_out(event_body) == 6

    first = hooks.claim(10, "t1")
    assert _types(first) == ["VideoRequested", "VideoRequested"]  # one per image
    assert hooks.claim(10, "t1") == []  # the rest wait

    a, b = first
    hooks.record([(a, OK), (b, GONE_FOR_GOOD)])  # a success or a give-up releases alike
    second = hooks.claim(10, "t1")
    assert sorted(_types(second)) == ["VideoProcessingStarted", "VideoProcessingStarted"]
    hooks.record([(c, OK) for c in second])
    assert _types(hooks.claim(10, "t1")) == ["VideoCompleted", "VideoCompleted"]


def test_a_retried_delivery_still_holds_back_the_next(
    database: Database, service: VideoService
) -> None:
    hooks = WebhookService(
        database,
        WebhookPolicy(allowed_networks=parse_networks("127.0.0.0/8"), schedule=(0.0, 0.0)),
    )
    hooks.create("http://127.0.0.1:9/hook")
    _image_history(service, "a.png")
    hooks.fan_out(event_body)
    [first] = hooks.claim(10, "t1")
    hooks.record([(first, GONE_FOR_GOOD)])  # failed once, retried: still pending
    [again] = hooks.claim(10, "t1")
    assert again.message_id == first.message_id


def test_a_delivery_stranded_behind_a_finished_one_is_released(
    hooks: WebhookService, database: Database, service: VideoService
) -> None:
    """The one before it finished in a transaction that could not see it yet."""
    hooks.create("http://127.0.0.1:9/hook")
    _image_history(service, "a.png")
    hooks.fan_out(event_body)
    [first] = hooks.claim(10, "t1")
    hooks.record([(first, OK)])
    d = webhook_deliveries.c
    with database.write() as conn:  # as if made while `first` was still pending
        conn.execute(
            update(webhook_deliveries)
            .where(d.message_id != first.message_id)
            .values(next_attempt_at=None)
        )
    assert hooks.claim(10, "t1") == []
    assert hooks.release_stranded() == 1  # only the next one: the last waits behind it
    assert _types(hooks.claim(10, "t1")) == ["VideoProcessingStarted"]


def test_replayed_deliveries_of_one_image_go_in_order(
    hooks: WebhookService, service: VideoService
) -> None:
    endpoint, _ = hooks.create("http://127.0.0.1:9/hook")
    _image_history(service, "a.png")
    hooks.fan_out(event_body)
    for _ in range(3):
        hooks.record([(c, GONE_FOR_GOOD) for c in hooks.claim(10, "t1")])
    assert hooks.claim(10, "t1") == []  # all three failed

    assert hooks.replay(endpoint.id, status="failed") == 3
    for expected in ("VideoRequested", "VideoProcessingStarted", "VideoCompleted"):
        claimed = hooks.claim(10, "t1")
        assert _types(claimed) == [expected]
        hooks.record([(claimed[0], OK)])
