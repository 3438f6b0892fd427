"""Every error code of the HTTP API, triggered over HTTP, on both databases.

Each answer must be RFC 9457 problem JSON with a stable `code`: never HTML,
never FastAPI's bare `{"detail": ...}`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.keys import Role, create_key

PROBLEM_JSON = "application/problem+json"
IMG = "cat.png"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is a problem document with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert not response.text.lstrip().startswith("<")
    body: dict[str, Any] = response.json()
    assert set(body) != {"detail"}
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["code"] == code
    if status == 422 and code == "validation_error":
        assert "errors" in body, f"a 422 must list its errors: {body}"
        errors = body["errors"]
        assert isinstance(errors, list) and errors
        for err in errors:
            assert isinstance(err["loc"], list)
            assert isinstance(err["msg"], str) and err["msg"]
    return body


def request_video(client: TestClient, name: str = IMG, **extra: Any) -> httpx.Response:
    return client.post("/v1/videos", json={"img_name": name, "source_type": "role_card", **extra})


def claim(client: TestClient, name: str = IMG) -> str:
    r = client.post("/v1/worker/claim", json={"worker_id": "w1"})
    assert r.status_code == 200, r.text
    assert r.json()["img_name"] == name
    token: str = r.json()["lease_token"]
    return token


def complete(client: TestClient, token: str, name: str = IMG) -> httpx.Response:
    return client.post(
        f"/v1/worker/tasks/{name}/complete",
        json={"lease_token": token, "video_filename": f"{name}.mp4"},
    )


def completed_video(client: TestClient, name: str = IMG) -> str:
    assert request_video(client, name).status_code == 202
    token = claim(client, name)
    assert complete(client, token, name).status_code == 200
    return token


# --- validation_error (422) -----------------------------------------------------


def test_malformed_json_is_a_validation_problem(client: TestClient) -> None:
    r = client.post("/v1/videos", content=b"{bad", headers={"content-type": "application/json"})
    body = assert_problem(r, 422, "validation_error")
    assert "JSON" in body["errors"][0]["msg"]


@pytest.mark.parametrize(
    "img_name",
    ["../x", "a/b", "a\\b", "..", ".", "bad\x01name", "", "a" * 501],
    ids=["dotdot-slash", "slash", "backslash", "dotdot", "dot", "control", "empty", "501-chars"],
)
def test_bad_img_name_in_body(client: TestClient, img_name: str) -> None:
    body = assert_problem(request_video(client, img_name), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "img_name"]
    assert client.get("/v1/stats").json()["total"] == 0


def test_longest_img_name_is_accepted(client: TestClient) -> None:
    assert request_video(client, "a" * 500).status_code == 202


def test_bad_img_name_in_path(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/videos/a%5Cb"), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["path", "img_name"]
    assert_problem(client.get("/v1/videos/" + "a" * 501), 422, "validation_error")


def test_unknown_field(client: TestClient) -> None:
    body = assert_problem(request_video(client, colour="red"), 422, "validation_error")
    assert any(e["loc"][-1] == "colour" for e in body["errors"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("regenerate", "yes"), ("prompt", 5), ("params", [1, 2]), ("source_type", 7)],
)
def test_wrong_type(client: TestClient, field: str, value: object) -> None:
    body = assert_problem(request_video(client, **{field: value}), 422, "validation_error")
    assert any(field in e["loc"] for e in body["errors"])


def test_prompt_over_2000_chars(client: TestClient) -> None:
    assert_problem(request_video(client, prompt="p" * 2001), 422, "validation_error")
    assert request_video(client, prompt="p" * 2000).status_code == 202


def test_params_over_16_kib(client: TestClient) -> None:
    body = assert_problem(
        request_video(client, params={"blob": "x" * 17_000}), 422, "validation_error"
    )
    assert any("params" in e["loc"] for e in body["errors"])


@pytest.mark.parametrize("source_type", ["Role", "1abc", "a" * 21, "", "role-card"])
def test_bad_source_type(client: TestClient, source_type: str) -> None:
    r = client.post("/v1/videos", json={"img_name": IMG, "source_type": source_type})
    body = assert_problem(r, 422, "validation_error")
    assert any("source_type" in e["loc"] for e in body["errors"])


@pytest.mark.parametrize("count", [0, 1001])
def test_batch_size_out_of_range(client: TestClient, count: int) -> None:
    names = [f"img{i}.png" for i in range(count)]
    r = client.post("/v1/videos/status", json={"img_names": names})
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize("limit", [0, 501])
def test_list_limit_out_of_range(client: TestClient, limit: int) -> None:
    body = assert_problem(client.get(f"/v1/videos?limit={limit}"), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["query", "limit"]


def _cursor(payload: object) -> str:
    """A cursor in the shape the API hands out, with content it never would."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "url",
    [
        "/v1/videos?cursor=not-a-cursor",
        "/v1/videos?cursor=" + _cursor([]),
        "/v1/videos?cursor=" + _cursor(["2024-01-01T00:00:00", 1]),  # no time zone
        f"/v1/videos/{IMG}/history?cursor=not-a-cursor",
        "/v1/events?after=not-a-cursor",
        "/v1/events?after=1.2.3",
    ],
    ids=["list", "list-empty", "list-naive-time", "history", "events", "events-dots"],
)
def test_bad_cursor(client: TestClient, url: str) -> None:
    assert request_video(client).status_code == 202
    assert_problem(client.get(url), 422, "validation_error")


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/videos/{IMG}/history?cursor=" + _cursor([10**30]),
        "/v1/events?after=" + "9" * 30,
        "/v1/events?after=" + "9" * 30 + ".1",
        f"/v1/videos/{IMG}?version=" + "9" * 20,
    ],
    ids=["history", "events", "events-tx", "version"],
)
def test_out_of_range_numbers_are_not_an_internal_error(client: TestClient, url: str) -> None:
    """Past the end of the log is an empty page (or the status now), or a 422: never a 500."""
    assert request_video(client).status_code == 202
    r = client.get(url)
    if r.status_code == 200:
        body = r.json()
        if "items" in body:
            assert body["items"] == []
        else:
            assert body == client.get(f"/v1/videos/{IMG}").json()
    else:
        assert_problem(r, 422, "validation_error")


# --- idempotency_key_reused (422) ------------------------------------------------


def test_idempotency_key_reused_with_another_body(client: TestClient) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = client.post(
        "/v1/videos", json={"img_name": IMG, "source_type": "role_card"}, headers=key
    )
    assert first.status_code == 202
    r = client.post(
        "/v1/videos",
        json={"img_name": IMG, "source_type": "role_card", "prompt": "other"},
        headers=key,
    )
    assert_problem(r, 422, "idempotency_key_reused")


# --- 409s -----------------------------------------------------------------------


def test_video_in_progress_while_pending(client: TestClient) -> None:
    assert request_video(client).status_code == 202
    body = assert_problem(request_video(client), 409, "video_in_progress")
    assert "pending" in body["detail"]


def test_video_in_progress_while_processing(client: TestClient) -> None:
    assert request_video(client).status_code == 202
    claim(client)
    body = assert_problem(request_video(client), 409, "video_in_progress")
    assert "processing" in body["detail"]


def test_video_exists_without_regenerate(client: TestClient) -> None:
    completed_video(client)
    assert_problem(request_video(client), 409, "video_exists")
    assert client.get(f"/v1/videos/{IMG}").json()["video_status"] == "completed"


def test_retry_of_a_completed_video_is_an_invalid_transition(client: TestClient) -> None:
    completed_video(client)
    body = assert_problem(client.post(f"/v1/videos/{IMG}/retry"), 409, "invalid_transition")
    assert "completed" in body["detail"] and "pending" in body["detail"]


def test_delete_of_a_pending_video_is_an_invalid_transition(client: TestClient) -> None:
    assert request_video(client).status_code == 202
    body = assert_problem(client.delete(f"/v1/videos/{IMG}"), 409, "invalid_transition")
    assert "pending" in body["detail"] and "none" in body["detail"]
    assert client.get(f"/v1/videos/{IMG}").json()["video_status"] == "pending"


def test_cancel_of_a_never_requested_video_is_an_invalid_transition(client: TestClient) -> None:
    body = assert_problem(client.post(f"/v1/videos/{IMG}/cancel"), 409, "invalid_transition")
    assert "none" in body["detail"] and "cancelled" in body["detail"]
    assert client.get(f"/v1/videos/{IMG}").json()["version"] == 0


def test_lease_lost_with_a_wrong_token(client: TestClient) -> None:
    assert request_video(client).status_code == 202
    claim(client)
    assert_problem(complete(client, "not-the-token"), 409, "lease_lost")
    assert client.get(f"/v1/videos/{IMG}").json()["video_status"] == "processing"


def test_lease_lost_after_the_task_was_completed(client: TestClient) -> None:
    token = completed_video(client)
    assert_problem(complete(client, token), 409, "lease_lost")
    r = client.post(
        f"/v1/worker/tasks/{IMG}/heartbeat", json={"lease_token": token, "progress": 0.5}
    )
    assert_problem(r, 409, "lease_lost")
    assert client.get(f"/v1/videos/{IMG}").json()["version"] == 3


# --- 404, 405, 413 ---------------------------------------------------------------


@pytest.mark.parametrize("url", ["/v1/nope", "/nope", "/v2/videos"])
def test_unknown_route_is_not_found(client: TestClient, url: str) -> None:
    assert_problem(client.get(url), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "url"), [("PUT", "/v1/videos"), ("DELETE", "/v1/stats"), ("GET", "/v1/worker/claim")]
)
def test_method_not_allowed(client: TestClient, method: str, url: str) -> None:
    assert_problem(client.request(method, url), 405, "method_not_allowed")


def _big_body() -> bytes:
    return (
        b'{"img_name": "cat.png", "source_type": "role_card", "prompt": "' + b"p" * 70_000 + b'"}'
    )


def test_payload_too_large_with_content_length(client: TestClient) -> None:
    r = client.post("/v1/videos", content=_big_body(), headers={"content-type": "application/json"})
    assert_problem(r, 413, "payload_too_large")
    assert client.get(f"/v1/videos/{IMG}").json()["version"] == 0


def test_payload_too_large_when_chunked(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        body = _big_body()
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = client.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem(r, 413, "payload_too_large")
    assert client.get(f"/v1/videos/{IMG}").json()["version"] == 0


def test_body_just_under_the_limit_is_not_refused_for_size(client: TestClient) -> None:
    body = b'{"img_names": [' + b",".join([b'"n%04d.png"' % i for i in range(1000)]) + b"]}"
    assert len(body) < 64 * 1024
    r = client.post("/v1/videos/status", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200


# --- 401, 403 --------------------------------------------------------------------


@pytest.fixture
def secrets(database: Database) -> dict[Role, str]:
    now = datetime.now(UTC)
    return {role: create_key(database, f"key-{role.value}", role, now) for role in Role}


@pytest.fixture
def keyed_client(
    settings: Settings, database: Database, secrets: dict[Role, str]
) -> Iterator[TestClient]:
    """A server started after its keys were made: it does not run open."""
    with TestClient(create_app(settings, db=database)) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer vl_000000000000_unknown"},
        {"X-API-Key": "vl_000000000000_unknown"},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "unknown-bearer", "unknown-x-api-key", "garbage", "basic", "no-value", "blank"],
)
def test_unauthorized(keyed_client: TestClient, headers: dict[str, str]) -> None:
    r = keyed_client.get(f"/v1/videos/{IMG}", headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_forbidden_read_key_requesting_a_video(
    keyed_client: TestClient, secrets: dict[Role, str]
) -> None:
    r = keyed_client.post(
        "/v1/videos",
        json={"img_name": IMG, "source_type": "role_card"},
        headers={"X-API-Key": secrets[Role.READ]},
    )
    assert_problem(r, 403, "forbidden")
    admin = {"X-API-Key": secrets[Role.ADMIN]}
    assert keyed_client.get(f"/v1/videos/{IMG}", headers=admin).json()["version"] == 0


def test_forbidden_write_key_claiming(keyed_client: TestClient, secrets: dict[Role, str]) -> None:
    r = keyed_client.post(
        "/v1/worker/claim", json={"worker_id": "w1"}, headers={"X-API-Key": secrets[Role.WRITE]}
    )
    assert_problem(r, 403, "forbidden")


def test_forbidden_worker_key_on_admin(keyed_client: TestClient, secrets: dict[Role, str]) -> None:
    r = keyed_client.get("/v1/admin/projections", headers={"X-API-Key": secrets[Role.WORKER]})
    assert_problem(r, 403, "forbidden")
