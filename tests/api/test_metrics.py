"""/metrics: what operators scrape, checked after real traffic."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db.engine import Database


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


def test_metrics_count_traffic_appends_retries_failures_and_read_the_queue(
    client: TestClient,
) -> None:
    for name in ("a.png", "b.png", "c.png"):
        assert (
            client.post("/v1/videos", json={"img_name": name, "source_type": "scene"}).status_code
            == 202
        )
    assert (
        client.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"}).status_code
        == 409
    )
    task = client.post("/v1/worker/claim", json={"worker_id": "w"}).json()
    client.post(
        f"/v1/worker/tasks/{task['img_name']}/fail",
        json={
            "lease_token": task["lease_token"],
            "error_code": "generator.timeout",
            "error_message": "slow",
            "retryable": True,
        },
    )
    task = client.post("/v1/worker/claim", json={"worker_id": "w"}).json()
    client.post(
        f"/v1/worker/tasks/{task['img_name']}/fail",
        json={
            "lease_token": task["lease_token"],
            "error_code": "image.not_found",
            "error_message": "gone",
            "retryable": False,
        },
    )
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = 'route="/v1/videos"'
    assert (
        _value(text, "vidledger_http_requests_total", f'{{method="POST",{route},status="202"}}')
        == 3
    )
    assert (
        _value(text, "vidledger_http_requests_total", f'{{method="POST",{route},status="409"}}')
        == 1
    )
    assert (
        _value(text, "vidledger_http_request_duration_seconds_count", f'{{method="POST",{route}}}')
        == 4
    )
    assert _value(text, "vidledger_events_appended_total", '{event_type="VideoRequested"}') == 3
    assert _value(text, "vidledger_retries_total", '{code="generator.timeout"}') == 1
    assert _value(text, "vidledger_failures_total", '{code="image.not_found"}') == 1
    assert _value(text, "vidledger_videos", '{status="failed"}') == 1
    assert _value(text, "vidledger_videos", '{status="pending"}') == 2
    assert _value(text, "vidledger_oldest_pending_age_seconds") >= 0
    assert _value(text, "vidledger_projection_rows", '{projection="image_video_status"}') == 3
    assert _value(text, "vidledger_projection_stale", '{projection="image_video_status"}') == 0
    assert _value(text, "vidledger_database_up") == 1


def test_unknown_routes_are_one_label_not_one_per_path(client: TestClient) -> None:
    for i in range(3):
        client.get(f"/nope/{i}")
    text = client.get("/metrics").text
    assert (
        _value(
            text, "vidledger_http_requests_total", '{method="GET",route="unmatched",status="404"}'
        )
        == 3
    )
    assert "/nope/1" not in text


def test_feed_lag_shows_events_held_back_by_an_open_transaction(
    client: TestClient, database: Database
) -> None:
    """On PostgreSQL the feed hides events committed after an older open
    transaction began; operators see how many, and they clear when it ends."""
    opened = database.write if database.backend.name == "postgresql" else database.read
    with opened() as blocker:
        blocker.execute(
            text(
                "SELECT pg_current_xact_id()"
                if database.backend.name == "postgresql"
                else "SELECT 1"
            )
        )
        new = client.post("/v1/videos", json={"img_name": "a.png", "source_type": "scene"})
        assert new.status_code == 202
        held = client.get("/metrics").text
    after = client.get("/metrics").text
    if database.backend.name == "postgresql":
        assert _value(held, "vidledger_feed_hidden_events") >= 1
    else:  # serial writes: the feed never holds anything back
        assert _value(held, "vidledger_feed_hidden_events") == 0
    assert _value(after, "vidledger_feed_hidden_events") == 0
    assert _value(after, "vidledger_feed_lag_seconds") == 0
