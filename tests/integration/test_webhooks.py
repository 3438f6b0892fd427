"""Webhooks against a real HTTP receiver on loopback, on SQLite and PostgreSQL.

Signatures are checked with the `standardwebhooks` package, the reference
implementation, not with vidledger's own code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from tests.integration.processes import wait_for
from tests.integration.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


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


def test_an_endpoint_failing_with_nothing_delivered_is_disabled(
    settings: Settings, database: Database, receiver: Receiver
) -> None:
    settings.webhook_allowed_networks = "127.0.0.0/8"
    settings.webhook_retry_schedule = ",".join(["0"] + ["0.2"] * 20)
    settings.webhook_disable_after_seconds = 1.0
    receiver.default = 500
    with TestClient(create_app(settings, db=database, run_dispatcher=True)) as client:
        endpoint = add_endpoint(client, receiver.url)
        client.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
        path = f"/v1/webhooks/endpoints/{endpoint['id']}"
        wait_for(lambda: client.get(path).json()["state"] == "disabled", timeout=20)
        shown = client.get(path).json()
        assert shown["disabled_reason"] == "nothing delivered while deliveries kept failing"
        [delivery] = client.get(f"{path}/deliveries").json()["items"]
        attempts = delivery["attempts"]
        time.sleep(1.0)  # a disabled endpoint is sent nothing more
        assert client.get(f"{path}/deliveries").json()["items"][0]["attempts"] == attempts
        receiver.default = 200
        client.patch(path, json={"state": "enabled"})
        wait_for(lambda: len(receiver.received) == 1, timeout=20, what="sent once enabled")


def test_metrics_count_deliveries_and_show_what_is_pending(
    app: TestClient, receiver: Receiver
) -> None:
    endpoint = add_endpoint(app, receiver.url)
    app.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    counted = f'vidledger_webhook_deliveries_total{{endpoint="{endpoint["id"]}",outcome="2xx"}} 1.0'
    # Counted once recorded, a moment after the receiver answered.
    wait_for(lambda: counted in app.get("/metrics").text, timeout=10, what="the delivery counted")
    assert endpoint["secret"] not in app.get("/metrics").text


def test_the_cli_manages_endpoints_and_lists_deliveries(
    app: TestClient,
    receiver: Receiver,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() configures logging: put it back
    monkeypatch.setattr(root, "handlers", handlers[:])
    monkeypatch.setattr(root, "level", level)
    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("VIDLEDGER_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")
    assert main(["webhooks", "add", receiver.url, "--event-type", "VideoRequested", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["secret"].startswith("whsec_")
    assert main(["webhooks", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert added["id"] in listed and added["secret"] not in listed
    app.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
    wait_for(lambda: len(receiver.received) == 1, timeout=20)
    assert main(["webhooks", "deliveries", added["id"], "--json"]) == 0
    [delivery] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (delivery["status"], delivery["event_type"]) == ("succeeded", "VideoRequested")
    assert main(["webhooks", "disable", added["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "disabled"
    assert main(["webhooks", "add", "http://169.254.169.254/latest"]) == 1
    assert "refused url" in capsys.readouterr().err
    assert main(["webhooks", "replay", added["id"]]) == 1  # which ones?
    assert "exactly one of" in capsys.readouterr().err


@pytest.fixture
def private_name(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A network namespace in which `receiver.internal.test` resolves to
    10.0.0.1, through its own hosts file (`ip netns exec` mounts
    /etc/netns/<name>/hosts over /etc/hosts). Yields (namespace, host name)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run this as root, with iproute2")
        pytest.skip("needs root and iproute2 (ip netns)")
    name = f"vl{os.getpid()}"
    folder = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        folder.mkdir(parents=True)
        (folder / "hosts").write_text("10.0.0.1 receiver.internal.test\n")
        yield name, "receiver.internal.test"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_name_that_resolves_to_a_private_address_is_refused(
    private_name: tuple[str, str], sqlite_template: Path, tmp_path: Path
) -> None:
    namespace, host = private_name
    database = tmp_path / "vidledger.db"
    shutil.copy(sqlite_template, database)
    env = {**os.environ, "VIDLEDGER_DATABASE_URL": f"sqlite:///{database}"}

    def add(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "app.cli", "webhooks", "add",
             f"http://{host}/hooks"],
            env={**env, **extra},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip

    refused = add()
    assert refused.returncode == 1
    assert f"refused url: {host} is a private address (10.0.0.1)" in refused.stderr
    assert "Traceback" not in refused.stderr
    allowed = add(VIDLEDGER_WEBHOOK_ALLOWED_NETWORKS="10.0.0.0/8")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("whsec_")
