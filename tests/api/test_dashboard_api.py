"""The API additions the dashboard reads: /v1/me, the listing's name_prefix, the feed's tail."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.keys import Role, create_key


def _request(client: TestClient, name: str, source_type: str = "scene") -> None:
    r = client.post("/v1/videos", json={"img_name": name, "source_type": source_type})
    assert r.status_code == 202, r.text


def test_me_in_open_mode_is_the_anonymous_admin(client: TestClient) -> None:
    r = client.get("/v1/me")
    assert r.status_code == 200
    assert r.json() == {
        "name": "anonymous",
        "role": "admin",
        "permissions": ["admin", "read", "worker", "write"],
        "open": True,
    }


def test_me_names_the_key_and_what_its_role_may_do(settings: Settings, database: Database) -> None:
    reader = create_key(database, "ops-viewer", Role.READ, datetime.now(UTC))
    with TestClient(create_app(settings, db=database)) as c:
        assert c.get("/v1/me").json()["code"] == "unauthorized"
        body = c.get("/v1/me", headers={"X-API-Key": reader}).json()
    assert body == {"name": "ops-viewer", "role": "read", "permissions": ["read"], "open": False}


def test_name_prefix_is_exact_case_and_wildcard_free(client: TestClient) -> None:
    for name in ("cat-1.png", "cat-2.png", "Cat-3.png", "dog.png", "c%t.png", "c_t.png"):
        _request(client, name)

    def names(prefix: str) -> set[str]:
        r = client.get("/v1/videos", params={"name_prefix": prefix})
        assert r.status_code == 200, r.text
        return {i["img_name"] for i in r.json()["items"]}

    assert names("cat-") == {"cat-1.png", "cat-2.png"}
    assert names("C") == {"Cat-3.png"}
    assert names("c%") == {"c%t.png"}
    assert names("c_") == {"c_t.png"}
    assert names("zebra") == set()


def test_name_prefix_pages_with_the_cursor_and_other_filters(client: TestClient) -> None:
    for i in range(5):
        _request(client, f"shot-{i}.png", "scene")
    _request(client, "shot-x.png", "upload")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"name_prefix": "shot-", "source_type": "scene", "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/videos", params=params).json()
        seen += [i["img_name"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"shot-{i}.png" for i in range(5)]
    assert client.get("/v1/videos", params={"name_prefix": ""}).status_code == 422


def _tail(client: TestClient, limit: int, last: str) -> dict[str, Any]:
    """The feed's tail once `last` is visible: on PostgreSQL any transaction open
    on the server (another test session's, even) holds the feed back a while."""
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = client.get(
            "/v1/events", params={"tail": "true", "limit": str(limit)}
        ).json()
        if body["items"] and body["items"][-1]["img_name"] == last:
            return body
        assert time.monotonic() < deadline, f"{last} never became visible"
        time.sleep(0.05)


def test_tail_reads_the_last_events_and_continues_from_now(client: TestClient) -> None:
    for i in range(5):
        _request(client, f"t{i}.png")
    tail = _tail(client, 2, "t4.png")
    assert [e["img_name"] for e in tail["items"]] == ["t3.png", "t4.png"]
    assert tail["next_cursor"] == tail["items"][-1]["cursor"]

    _request(client, "t5.png")
    _tail(client, 1, "t5.png")
    after = client.get("/v1/events", params={"after": tail["next_cursor"]}).json()
    assert [e["img_name"] for e in after["items"]] == ["t5.png"]

    filtered = client.get(
        "/v1/events", params={"tail": "true", "limit": "5", "img_name": "t1.png"}
    ).json()
    assert [e["img_name"] for e in filtered["items"]] == ["t1.png"]


def test_tail_of_an_empty_log_and_tail_with_after(client: TestClient) -> None:
    empty = client.get("/v1/events", params={"tail": "true"}).json()
    assert empty == {"items": [], "next_cursor": None}
    _request(client, "a.png")
    cursor = client.get("/v1/events").json()["next_cursor"]
    r = client.get("/v1/events", params={"tail": "true", "after": cursor})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
