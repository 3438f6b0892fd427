"""Webhooks against a real HTTP receiver on loopback, on SQLite and PostgreSQL.

Signatures are checked with the `standardwebhooks` package, the reference
implementation, not with vidledger's own code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from tests.integration.processes import wait_for
from tests.integration.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def app(settings: Settings, database: Database) -> Iterator[TestClient]:
    settings.webhook_allowed_networks = "127.0.0.0/8"
    settings.webhook_retry_schedule = "0,0.2,0.2"
    with TestClient(create_app(settings, db=database, run_dispatcher=True)) as c:
        yield c


def add_endpoint(client: TestClient, url: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/webhooks/endpoints", json={"url": url, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def life(client: TestClient, img: str, source_type: str = "scene") -> None:
    """Requested, processing, completed: through the API, as a worker would."""
    assert (
        client.post("/v1/videos", json={"img_name": img, "source_type": source_type}).status_code
        == 202
    )
    task = client.post("/v1/worker/claim", json={"worker_id": "w"}).json()
    done = {"lease_token": task["lease_token"], "video_filename": f"{img}.mp4"}
    assert client.post(f"/v1/worker/tasks/{img}/complete", json=done).status_code == 200


def test_a_video_life_arrives_signed_and_in_order(app: TestClient, receiver: Receiver) -> None:
    endpoint = add_endpoint(app, receiver.url)
    assert endpoint["secret"].startswith("whsec_")
    for img in ("a.png", "b.png"):
        life(app, img)
    wait_for(lambda: len(receiver.received) == 6, timeout=20, what="six deliveries")
    feed = {e["event_id"]: e for e in app.get("/v1/events", params={"limit": 100}).json()["items"]}
    verifier = Webhook(endpoint["secret"])
    for got in receiver.received:
        payload = verifier.verify(got.body, got.headers)
        assert got.headers["webhook-id"] == payload["data"]["event_id"]
        assert payload["data"] == feed[payload["data"]["event_id"]]
        assert payload["type"] == payload["data"]["event_type"]
    for img in ("a.png", "b.png"):
        versions = [e["data"]["version"] for e in receiver.events() if e["data"]["img_name"] == img]
        assert versions == [1, 2, 3]


def test_filters_by_event_type_and_source_type(app: TestClient, receiver: Receiver) -> None:
    add_endpoint(app, receiver.url, event_types=["VideoCompleted"], source_types=["role_card"])
    life(app, "scene.png", "scene")
    life(app, "card.png", "role_card")
    wait_for(lambda: len(receiver.received) >= 1, timeout=20)
    time.sleep(0.5)
    got = [(e["type"], e["data"]["img_name"]) for e in receiver.events()]
    assert got == [("VideoCompleted", "card.png")]


def test_a_receiver_that_is_down_gets_everything_later_in_order(
    settings: Settings, database: Database, receiver: Receiver
) -> None:
    settings.webhook_allowed_networks = "127.0.0.0/8"
    settings.webhook_retry_schedule = "0,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3"
    receiver.default = 503
    with TestClient(create_app(settings, db=database, run_dispatcher=True)) as client:
        add_endpoint(client, receiver.url)
        for img in ("a.png", "b.png", "c.png"):
            life(client, img)
        time.sleep(1.0)
        assert receiver.received == []
        receiver.default = 200  # it is back
        wait_for(lambda: len(receiver.received) == 9, timeout=30, what="all nine")
    for img in ("a.png", "b.png", "c.png"):
        versions = [e["data"]["version"] for e in receiver.events() if e["data"]["img_name"] == img]
        assert versions == [1, 2, 3]


def test_a_410_disables_the_endpoint(app: TestClient, receiver: Receiver) -> None:
    endpoint = add_endpoint(app, receiver.url)
    receiver.default = 410
    life(app, "a.png")
    wait_for(
        lambda: app.get(f"/v1/webhooks/endpoints/{endpoint['id']}").json()["state"] == "disabled",
        timeout=20,
    )
    shown = app.get(f"/v1/webhooks/endpoints/{endpoint['id']}").json()
    assert "410" in shown["disabled_reason"]


def test_a_429_with_retry_after_is_waited_out(app: TestClient, receiver: Receiver) -> None:
    add_endpoint(app, receiver.url)
    receiver.answers = [(429, {"Retry-After": "2"})]
    refused_at = time.time()
    app.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    assert receiver.received[0].at - refused_at >= 2.0


def test_an_exhausted_schedule_fails_and_a_replay_succeeds(
    app: TestClient, receiver: Receiver
) -> None:
    endpoint = add_endpoint(app, receiver.url)
    receiver.default = 500
    app.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
    path = f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries"
    wait_for(lambda: app.get(path, params={"status": "failed"}).json()["items"] != [], timeout=20)
    [failed] = app.get(path, params={"status": "failed"}).json()["items"]
    assert (failed["attempts"], failed["last_status_code"]) == (3, 500)
    receiver.default = 200
    r = app.post(f"/v1/webhooks/endpoints/{endpoint['id']}/replay", json={"status": "failed"})
    assert r.json() == {"replayed": 1}
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    wait_for(lambda: app.get(path).json()["items"][0]["status"] == "succeeded", timeout=10)
    assert receiver.received[0].headers["webhook-id"] == failed["event_id"]


def test_a_rotated_secret_signs_beside_the_old_one(app: TestClient, receiver: Receiver) -> None:
    endpoint = add_endpoint(app, receiver.url)
    new = app.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret").json()["secret"]
    assert new != endpoint["secret"]
    app.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    got = receiver.received[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], new):
        Webhook(secret).verify(got.body, got.headers)
    listed = app.get("/v1/webhooks/endpoints").text
    assert endpoint["secret"] not in listed and new not in listed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://10.0.0.1/x",
    ],
)
def test_private_addresses_are_refused(client: TestClient, url: str) -> None:
    r = client.post("/v1/webhooks/endpoints", json={"url": url})
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"
    assert "refused url" in r.json()["detail"]


def test_only_http_and_https(client: TestClient) -> None:
    r = client.post("/v1/webhooks/endpoints", json={"url": "ftp://example.com/x"})
    assert r.status_code == 422


def test_a_test_message_is_sent(app: TestClient, receiver: Receiver) -> None:
    endpoint = add_endpoint(app, receiver.url)
    assert app.post(f"/v1/webhooks/endpoints/{endpoint['id']}/test").status_code == 202
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    got = Webhook(endpoint["secret"]).verify(
        receiver.received[0].body, receiver.received[0].headers
    )
    assert got["type"] == "webhook.test"
