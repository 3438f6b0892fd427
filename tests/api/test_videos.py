"""The happy paths of the HTTP API, on both databases."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

IMG = "cat.png"


# --- helpers ------------------------------------------------------------------------


def when(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    return parsed


def request_video(
    client: TestClient, name: str = IMG, source_type: str = "role_card", **extra: Any
) -> httpx.Response:
    return client.post("/v1/videos", json={"img_name": name, "source_type": source_type, **extra})


def requested(client: TestClient, name: str = IMG, **extra: Any) -> dict[str, Any]:
    r = request_video(client, name, **extra)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def status(client: TestClient, name: str = IMG, **params: Any) -> dict[str, Any]:
    r = client.get(f"/v1/videos/{name}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def claim(client: TestClient, worker_id: str = "w1") -> dict[str, Any]:
    r = client.post("/v1/worker/claim", json={"worker_id": worker_id})
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()
    return task


def claim_when_due(client: TestClient, worker_id: str = "w1") -> dict[str, Any]:
    """Claim, waiting out a retry's short backoff (the `settings` fixture's is ≤ 50 ms)."""
    for _ in range(500):
        r = client.post("/v1/worker/claim", json={"worker_id": worker_id})
        if r.status_code == 200:
            task: dict[str, Any] = r.json()
            return task
        assert r.status_code == 204, r.text
        time.sleep(0.01)
    raise AssertionError("nothing became due")


def worker_post(client: TestClient, name: str, action: str, **body: Any) -> dict[str, Any]:
    r = client.post(f"/v1/worker/tasks/{name}/{action}", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def complete(
    client: TestClient, task: dict[str, Any], filename: str | None = None
) -> dict[str, Any]:
    name = task["img_name"]
    return worker_post(
        client,
        name,
        "complete",
        lease_token=task["lease_token"],
        video_filename=filename or f"{name}.mp4",
    )


def fail(client: TestClient, task: dict[str, Any], *, retryable: bool) -> dict[str, Any]:
    return worker_post(
        client,
        task["img_name"],
        "fail",
        lease_token=task["lease_token"],
        error_code="gen.crashed",
        error_message="the generator crashed",
        retryable=retryable,
    )


def completed(client: TestClient, name: str = IMG, **extra: Any) -> dict[str, Any]:
    requested(client, name, **extra)
    task = claim(client)
    assert task["img_name"] == name
    return complete(client, task)


def history(client: TestClient, name: str = IMG, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/v1/videos/{name}/history", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def events(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/v1/events", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def feed(client: TestClient, expected: int, **params: Any) -> list[dict[str, Any]]:
    """GET /v1/events once at least `expected` items are visible.

    On PostgreSQL the feed shows an event only once every older transaction
    in the cluster has ended (it never skips a late commit), so a fresh
    write can take a moment to appear.
    """
    items = events(client, **params)
    for _ in range(500):
        if len(items) >= expected:
            break
        time.sleep(0.01)
        items = events(client, **params)
    return items


def settled(client: TestClient) -> None:
    """Wait until everything written so far is visible in the feed (via a sentinel)."""
    requested(client, "sentinel.png", source_type="sentinel")
    assert feed(client, 1, img_name="sentinel.png") != []


# --- one image's life ------------------------------------------------------------------


def test_an_image_never_seen_has_status_none(client: TestClient) -> None:
    body = status(client, "never.png")
    assert body["img_name"] == "never.png"
    assert body["video_status"] == "none"
    assert body["version"] == 0
    assert body["source_type"] is None
    assert body["generation"] == 0
    assert body["has_video"] is False
    assert body["video_url"] is None
    assert client.get("/v1/videos/never.png/has-video").json() == {
        "img_name": "never.png",
        "has_video": False,
    }


def test_request_claim_heartbeat_complete(client: TestClient) -> None:
    r = request_video(client, prompt="slow zoom", params={"fps": 12})
    assert r.status_code == 202
    assert r.headers["location"] == f"/v1/videos/{IMG}"
    body = r.json()
    assert body["video_status"] == "pending"
    assert body["generation"] == 1
    assert body["source_type"] == "role_card"
    assert body["prompt"] == "slow zoom"
    assert body["has_video"] is False
    assert body["version"] == 1

    task = claim(client, "w1")
    assert set(task) >= {
        "img_name",
        "source_type",
        "prompt",
        "params",
        "generation",
        "attempt",
        "lease_token",
        "lease_expires_at",
    }
    assert task["img_name"] == IMG
    assert task["source_type"] == "role_card"
    assert task["prompt"] == "slow zoom"
    assert task["params"]["fps"] == 12
    assert task["generation"] == 1
    assert task["attempt"] == 1
    assert task["lease_token"]
    when(task["lease_expires_at"])
    assert status(client)["video_status"] == "processing"

    beat = worker_post(client, IMG, "heartbeat", lease_token=task["lease_token"], progress=0.4)
    assert beat["cancel_requested"] is False
    when(beat["lease_expires_at"])
    now = status(client)
    assert now["video_status"] == "processing"
    assert now["progress"] == pytest.approx(0.4)
    assert now["attempts"] == 1

    done = complete(client, task)
    assert done["video_status"] == "completed"
    assert done["has_video"] is True
    assert done["video_filename"] == f"{IMG}.mp4"
    assert done["video_url"] == f"/v1/videos/{IMG}/content"
    assert done["progress"] is None
    assert status(client) == done
    assert client.get(f"/v1/videos/{IMG}/has-video").json() == {"img_name": IMG, "has_video": True}

    assert client.post("/v1/worker/claim", json={"worker_id": "w1"}).status_code == 204


def test_timings_are_known_once_a_video_completed(client: TestClient) -> None:
    done = completed(client)
    # The API: queued_seconds is request -> processing start; generation_seconds
    # processing start -> completion. Both are known once the video completed.
    assert isinstance(done["queued_seconds"], float | int) and done["queued_seconds"] >= 0
    assert isinstance(done["generation_seconds"], float | int) and done["generation_seconds"] >= 0
    assert status(client)["generation_seconds"] == done["generation_seconds"]


def test_history_oldest_first_with_actors(client: TestClient) -> None:
    completed(client)
    items = history(client)
    assert [(i["event_type"], i["from_status"], i["to_status"], i["actor"]) for i in items] == [
        ("VideoRequested", "none", "pending", "anonymous"),
        ("VideoProcessingStarted", "pending", "processing", "worker:w1"),
        ("VideoCompleted", "processing", "completed", "worker:w1"),
    ]
    assert [i["version"] for i in items] == [1, 2, 3]
    for item in items:
        assert {
            "version",
            "event_id",
            "event_type",
            "from_status",
            "to_status",
            "occurred_at",
            "actor",
            "reason",
            "data",
        } <= set(item)
        when(item["occurred_at"])
    assert items[2]["data"]["video_filename"] == f"{IMG}.mp4"


def test_history_pages_walk_every_event_once(client: TestClient) -> None:
    completed(client)
    client.delete(f"/v1/videos/{IMG}")
    requested(client)
    everything = history(client)
    assert len(everything) == 5
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get(f"/v1/videos/{IMG}/history", params=params).json()
        assert len(page["items"]) <= 1
        seen += [i["event_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["event_id"] for i in everything]


# --- listing and batch ---------------------------------------------------------------------


def test_list_newest_update_first_with_filters(client: TestClient) -> None:
    requested(client, "a.png", source_type="role_card")
    requested(client, "b.png", source_type="scene")
    requested(client, "c.png", source_type="scene")
    task = claim(client)
    assert task["img_name"] == "a.png"
    complete(client, task)  # a.png is now the most recently updated

    page = client.get("/v1/videos").json()
    assert [i["img_name"] for i in page["items"]] == ["a.png", "c.png", "b.png"]
    assert page["next_cursor"] is None
    stamps = [when(i["updated_at"]) for i in page["items"]]
    assert stamps == sorted(stamps, reverse=True)

    pending = client.get("/v1/videos", params={"status": "pending"}).json()["items"]
    assert [i["img_name"] for i in pending] == ["c.png", "b.png"]
    done = client.get("/v1/videos", params={"status": "completed"}).json()["items"]
    assert [i["img_name"] for i in done] == ["a.png"]
    scenes = client.get("/v1/videos", params={"source_type": "scene"}).json()["items"]
    assert [i["img_name"] for i in scenes] == ["c.png", "b.png"]
    both = client.get("/v1/videos", params={"source_type": "role_card", "status": "pending"})
    assert both.json()["items"] == []


def test_list_cursor_covers_every_image_once(client: TestClient) -> None:
    names = [f"img{i}.png" for i in range(7)]
    for name in names:
        requested(client, name)
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        r = client.get("/v1/videos", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen += [i["img_name"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None or pages > 5:
            break
    assert seen == list(reversed(names))
    assert pages == 3


def test_batch_status_in_the_order_asked(client: TestClient) -> None:
    completed(client, "b.png")
    requested(client, "a.png")
    asked = ["b.png", "unknown.png", "a.png", "b.png"]
    r = client.post("/v1/videos/status", json={"img_names": asked})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["img_name"] for i in items] == asked
    assert [i["video_status"] for i in items] == ["completed", "none", "pending", "completed"]
    assert items[1]["version"] == 0
    assert items[0] == items[3] == status(client, "b.png")


# --- cancel, retry, regenerate, delete ---------------------------------------------------------


def test_cancel_a_pending_video_at_once(client: TestClient) -> None:
    requested(client)
    r = client.post(f"/v1/videos/{IMG}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200
    assert r.json()["video_status"] == "cancelled"
    assert status(client)["video_status"] == "cancelled"
    assert history(client)[-1]["reason"] == "changed my mind"
    assert client.post("/v1/worker/claim", json={"worker_id": "w1"}).status_code == 204


def test_cancel_a_processing_video_through_its_worker(client: TestClient) -> None:
    requested(client)
    task = claim(client)
    r = client.post(f"/v1/videos/{IMG}/cancel")
    assert r.status_code == 200
    assert r.json()["video_status"] == "processing"
    assert r.json()["cancel_requested"] is True
    beat = worker_post(client, IMG, "heartbeat", lease_token=task["lease_token"])
    assert beat["cancel_requested"] is True
    done = worker_post(client, IMG, "cancelled", lease_token=task["lease_token"])
    assert done["video_status"] == "cancelled"
    assert done["cancel_requested"] is False


def test_retry_a_failed_video(client: TestClient) -> None:
    requested(client)
    failed = fail(client, claim(client), retryable=False)
    assert failed["video_status"] == "failed"
    assert failed["error"] == {
        "code": "gen.crashed",
        "message": "the generator crashed",
        "retryable": False,
    }
    r = client.post(f"/v1/videos/{IMG}/retry", json={"reason": "try again"})
    assert r.status_code == 202
    body = r.json()
    assert body["video_status"] == "pending"
    assert body["generation"] == 1
    assert body["attempts"] == 0
    assert body["error"] is None
    assert claim(client)["attempt"] == 1


def test_retryable_failure_goes_back_to_pending_with_its_error(client: TestClient) -> None:
    requested(client)
    task = claim(client)
    started = when(status(client)["started_at"])
    body = fail(client, task, retryable=True)
    assert body["video_status"] == "pending"
    assert body["attempts"] == 1
    assert body["error"] == {
        "code": "gen.crashed",
        "message": "the generator crashed",
        "retryable": True,
    }
    assert body["not_before"] is not None
    assert when(body["not_before"]) >= started
    assert status(client)["error"] == body["error"]


def test_retryable_failures_end_in_failed_after_max_attempts(client: TestClient) -> None:
    requested(client)
    last: dict[str, Any] = {}
    for attempt in (1, 2, 3):  # MAX_ATTEMPTS is 3 in the `settings` fixture
        task = claim_when_due(client)
        assert task["attempt"] == attempt
        last = fail(client, task, retryable=True)
    assert last["video_status"] == "failed"
    assert last["attempts"] == 3
    assert last["error"]["retryable"] is True
    assert last["not_before"] is None
    assert [i["event_type"] for i in history(client)][-1] == "VideoFailed"
    assert client.post("/v1/worker/claim", json={"worker_id": "w1"}).status_code == 204


def test_regenerate_keeps_the_old_video_while_pending(client: TestClient) -> None:
    first = completed(client)
    r = request_video(client, regenerate=True, prompt="again")
    assert r.status_code == 202
    body = r.json()
    assert body["video_status"] == "pending"
    assert body["generation"] == 2
    assert body["has_video"] is True
    assert body["video_filename"] == first["video_filename"]
    assert body["video_url"] == f"/v1/videos/{IMG}/content"
    task = claim(client)
    assert task["generation"] == 2
    assert status(client)["video_filename"] == first["video_filename"]
    assert complete(client, task, "cat.png.v2.mp4")["video_filename"] == "cat.png.v2.mp4"


def test_delete_a_completed_video(client: TestClient) -> None:
    completed(client)
    r = client.delete(f"/v1/videos/{IMG}", params={"reason": "gdpr"})
    assert r.status_code == 200
    body = r.json()
    assert body["video_status"] == "none"
    assert body["has_video"] is False
    assert body["video_url"] is None
    assert body["video_filename"] is None
    assert status(client) == body
    assert client.get(f"/v1/videos/{IMG}/has-video").json()["has_video"] is False
    assert history(client)[-1]["reason"] == "gdpr"


# --- time travel -----------------------------------------------------------------------------


def test_status_as_of_a_version_or_a_time(client: TestClient) -> None:
    first = requested(client)
    complete(client, claim(client))
    then = status(client, version=1)
    assert then["video_status"] == "pending"
    assert then["version"] == 1
    assert then["requested_at"] == first["requested_at"]
    assert status(client, version=2)["video_status"] == "processing"

    before = when(first["requested_at"]) - timedelta(seconds=1)
    early = status(client, at=before.isoformat())
    assert early["video_status"] == "none"
    assert early["version"] == 0

    later = when(status(client)["updated_at"]) + timedelta(seconds=1)
    assert status(client, at=later.isoformat())["video_status"] == "completed"


def test_as_of_a_time_without_zone_is_refused(client: TestClient) -> None:
    requested(client)
    r = client.get(f"/v1/videos/{IMG}", params={"at": "2024-01-01T00:00:00"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "validation_error"


# --- idempotency and request ids -------------------------------------------------------------


def test_idempotent_request_is_replayed_and_appends_once(client: TestClient) -> None:
    body = {"img_name": IMG, "source_type": "role_card", "prompt": "zoom"}
    key = {"Idempotency-Key": "req-1"}
    first = client.post("/v1/videos", json=body, headers=key)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/videos", json=body, headers=key)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert len(history(client)) == 1
    settled(client)
    assert len(events(client, img_name=IMG)) == 1

    other = client.post("/v1/videos", json={**body, "prompt": "pan"}, headers=key)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert len(history(client)) == 1


def test_idempotent_cancel_is_replayed(client: TestClient) -> None:
    requested(client)
    key = {"Idempotency-Key": "cancel-1"}
    first = client.post(f"/v1/videos/{IMG}/cancel", json={"reason": "no"}, headers=key)
    assert first.status_code == 200
    again = client.post(f"/v1/videos/{IMG}/cancel", json={"reason": "no"}, headers=key)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert [i["event_type"] for i in history(client)] == ["VideoRequested", "VideoCancelled"]
    settled(client)
    assert len(events(client, img_name=IMG, event_type="VideoCancelled")) == 1

    other = client.post(f"/v1/videos/{IMG}/cancel", json={"reason": "yes"}, headers=key)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    # Without a key, cancelling a cancelled video is refused: the replay was not a new cancel.
    assert client.post(f"/v1/videos/{IMG}/cancel").status_code == 409


def test_request_id_is_echoed_and_recorded(client: TestClient) -> None:
    r = client.post(
        "/v1/videos",
        json={"img_name": IMG, "source_type": "role_card"},
        headers={"X-Request-ID": "trace-42"},
    )
    assert r.status_code == 202
    assert r.headers["x-request-id"] == "trace-42"
    assert history(client)[0]["correlation_id"] == "trace-42"
    assert feed(client, 1)[0]["correlation_id"] == "trace-42"
    made = client.get("/healthz").headers["x-request-id"]
    assert made and made != "trace-42"


# --- the feed, stats, admin, probes -----------------------------------------------------------


def test_events_in_order_with_cursors(client: TestClient) -> None:
    requested(client, "a.png", source_type="role_card")
    requested(client, "b.png", source_type="scene")
    task = claim(client)
    assert task["img_name"] == "a.png"

    feed(client, 3)
    r = client.get("/v1/events")
    assert r.status_code == 200
    page = r.json()
    items = page["items"]
    assert [(i["img_name"], i["event_type"]) for i in items] == [
        ("a.png", "VideoRequested"),
        ("b.png", "VideoRequested"),
        ("a.png", "VideoProcessingStarted"),
    ]
    assert all(isinstance(i["cursor"], str) and i["cursor"] for i in items)
    assert len({i["cursor"] for i in items}) == 3
    assert page["next_cursor"] == items[-1]["cursor"]

    first = client.get("/v1/events", params={"limit": 1}).json()
    assert [i["event_id"] for i in first["items"]] == [items[0]["event_id"]]
    rest = events(client, after=first["next_cursor"])
    assert [i["event_id"] for i in rest] == [i["event_id"] for i in items[1:]]
    assert events(client, after=page["next_cursor"]) == []

    complete(client, task)
    newer = feed(client, 1, after=page["next_cursor"])
    assert [(i["img_name"], i["event_type"]) for i in newer] == [("a.png", "VideoCompleted")]


def test_events_filters(client: TestClient) -> None:
    requested(client, "a.png", source_type="role_card")
    requested(client, "b.png", source_type="scene")
    complete(client, claim(client))
    assert len(feed(client, 4)) == 4

    assert {i["img_name"] for i in events(client, img_name="b.png")} == {"b.png"}
    assert len(events(client, img_name="b.png")) == 1
    assert [i["img_name"] for i in events(client, event_type="VideoRequested")] == [
        "a.png",
        "b.png",
    ]
    assert [i["event_type"] for i in events(client, source_type="role_card")] == [
        "VideoRequested",
        "VideoProcessingStarted",
        "VideoCompleted",
    ]
    assert [i["img_name"] for i in events(client, source_type="scene")] == ["b.png"]


def test_stats_counts(client: TestClient) -> None:
    requested(client, "a.png", source_type="role_card")
    requested(client, "b.png", source_type="scene")
    requested(client, "c.png", source_type="scene")
    complete(client, claim(client))
    r = client.get("/v1/stats")
    assert r.status_code == 200
    stats = r.json()
    assert stats["by_status"]["completed"] == 1
    assert stats["by_status"]["pending"] == 2
    assert stats["by_status"]["processing"] == 0
    assert stats["total"] == 3
    assert stats["queue_depth"] == 2
    assert stats["by_source_type"]["scene"]["pending"] == 2
    assert stats["by_source_type"]["role_card"]["completed"] == 1
    assert stats["oldest_pending_age_seconds"] >= 0


def test_admin_projections(client: TestClient) -> None:
    requested(client, "a.png")
    requested(client, "b.png")
    r = client.get("/v1/admin/projections")
    assert r.status_code == 200
    [info] = [p for p in r.json()["items"] if p["name"] == "image_video_status"]
    assert info["state"] == "ok"
    assert info["rows"] == 2
    assert info["version"] == info["expected_version"]
    assert info["last_position"] >= 2


def test_probes(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


# --- OpenAPI -----------------------------------------------------------------------------------

API_OPERATIONS = {
    ("post", "/v1/videos"),
    ("get", "/v1/videos/{img_name}"),
    ("get", "/v1/videos/{img_name}/has-video"),
    ("post", "/v1/videos/status"),
    ("get", "/v1/videos"),
    ("get", "/v1/videos/{img_name}/history"),
    ("post", "/v1/videos/{img_name}/cancel"),
    ("post", "/v1/videos/{img_name}/retry"),
    ("delete", "/v1/videos/{img_name}"),
    ("get", "/v1/events"),
    ("get", "/v1/stats"),
    ("post", "/v1/worker/claim"),
    ("post", "/v1/worker/tasks/{img_name}/heartbeat"),
    ("post", "/v1/worker/tasks/{img_name}/complete"),
    ("post", "/v1/worker/tasks/{img_name}/fail"),
    ("get", "/v1/admin/projections"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_openapi_documents_the_contract(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented >= API_OPERATIONS, API_OPERATIONS - documented

    for path, ops in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            problem_answers = [
                code
                for code, answer in op["responses"].items()
                if code.startswith(("4", "5"))
                and "application/problem+json" in answer.get("content", {})
            ]
            assert problem_answers, f"{method} {path} documents no problem+json error"

    schemas = doc["components"]["schemas"]
    for name in ("VideoStatus", "Problem", "ValidationProblem", "Task", "Transition", "Event"):
        assert name in schemas, name
    assert "errors" in schemas["ValidationProblem"]["properties"]
    assert "code" in schemas["Problem"]["properties"]


@pytest.mark.parametrize(
    ("query", "where"),
    [("version=-1", "version"), ("version=abc", "version"), ("at=yesterday", "at")],
)
def test_bad_as_of_values_are_validation_problems(
    client: TestClient, query: str, where: str
) -> None:
    """`at` and `version` are parsed by the route, only when a query string is
    sent, and refused as FastAPI would refuse a declared parameter."""
    r = client.get(f"/v1/videos/{IMG}?{query}")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "validation_error"
    assert r.json()["errors"][0]["loc"] == ["query", where]


def test_unknown_query_parameters_are_ignored_by_a_status_read(client: TestClient) -> None:
    requested(client)
    assert client.get(f"/v1/videos/{IMG}?utm=x").json()["video_status"] == "pending"


def test_an_image_path_that_ends_in_a_tail_goes_to_that_tail(client: TestClient) -> None:
    """The status route is matched first, yet `<name>/history`, `/has-video`
    and `/content` still belong to their own routes; a tail's word alone is
    an image's name, and any other path with a slash is a bad name."""
    for name in ("a", "history", "content"):
        r = client.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
        assert r.status_code == 202, r.text
    history = client.get("/v1/videos/a/history")
    assert history.status_code == 200 and history.json()["img_name"] == "a"
    assert [i["to_status"] for i in history.json()["items"]] == ["pending"]
    assert client.get("/v1/videos/a/has-video").json() == {"img_name": "a", "has_video": False}
    assert client.get("/v1/videos/a/content").json()["code"] == "not_found"
    for name in ("history", "content"):
        r = client.get(f"/v1/videos/{name}")
        assert r.status_code == 200 and r.json()["img_name"] == name, r.text
        assert r.json()["video_status"] == "pending"
    for path in ("a/historyx", "a/history/x", "a/b"):
        r = client.get(f"/v1/videos/{path}")
        assert r.status_code == 422 and "img_name" in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "body",
    [
        '{"img_name": "t.png", "source_type": "scene", "prompt": "a\\u0000b"}',
        '{"img_name": "t.png", "source_type": "scene", "prompt": "a\\ud800b"}',
        '{"img_name": "t.png", "source_type": "scene", "params": {"k": "a\\u0000"}}',
        '{"img_name": "t.png", "source_type": "scene", "params": {"k\\u0000": 1}}',
    ],
    ids=["nul-prompt", "surrogate-prompt", "nul-param", "nul-param-key"],
)
def test_text_no_database_can_keep_is_a_422(client: TestClient, body: str) -> None:
    """PostgreSQL's text and JSONB refuse NUL: a clear 422 on every database,
    never a 500, and nothing written."""
    r = client.post("/v1/videos", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
    assert client.get("/v1/videos/t.png").json()["version"] == 0


def test_a_reason_no_database_can_keep_is_a_422(client: TestClient) -> None:
    assert (
        client.post("/v1/videos", json={"img_name": IMG, "source_type": "scene"}).status_code == 202
    )
    r = client.post(f"/v1/videos/{IMG}/cancel", json={"reason": "x\u0000"})
    assert r.status_code == 422, r.text
    r = client.delete(f"/v1/videos/{IMG}", params={"reason": "x\u0000"})
    assert r.status_code == 422, r.text
    assert client.get(f"/v1/videos/{IMG}").json()["video_status"] == "pending"
