"""API keys over HTTP: open mode, the two headers, actors, roles, revocation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.db.tables import api_keys
from app.keys import Role, create_key, revoke_key

IMG = "cat.png"
NEW = {"img_name": IMG, "source_type": "role_card"}


def now() -> datetime:
    return datetime.now(UTC)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def secrets(database: Database) -> dict[Role, str]:
    """One key per role, named after it, made before the server starts."""
    return {role: create_key(database, f"{role.value}-key", role, now()) for role in Role}


@pytest.fixture
def keyed(settings: Settings, database: Database, secrets: dict[Role, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db=database)) as c:
        yield c


def actors(client: TestClient, secret: str, name: str = IMG) -> list[str]:
    r = client.get(f"/v1/videos/{name}/history", headers=bearer(secret))
    assert r.status_code == 200, r.text
    return [i["actor"] for i in r.json()["items"]]


# --- open mode -----------------------------------------------------------------------


def test_open_mode_acts_as_anonymous_admin(client: TestClient) -> None:
    assert client.post("/v1/videos", json=NEW).status_code == 202
    assert client.get("/v1/admin/projections").status_code == 200
    items = client.get(f"/v1/videos/{IMG}/history").json()["items"]
    assert [i["actor"] for i in items] == ["anonymous"]


def test_first_key_closes_a_running_open_server(client: TestClient, database: Database) -> None:
    assert client.get(f"/v1/videos/{IMG}").status_code == 200  # open
    secret = create_key(database, "first", Role.ADMIN, now())
    r = client.get(f"/v1/videos/{IMG}")
    assert r.status_code == 401, "a key exists now: the server must no longer run open"
    assert r.json()["code"] == "unauthorized"
    assert client.get(f"/v1/videos/{IMG}", headers=bearer(secret)).status_code == 200


def test_no_open_mode_off_loopback(settings: Settings, database: Database) -> None:
    with TestClient(create_app(settings, db=database, host="0.0.0.0")) as c:
        r = c.get(f"/v1/videos/{IMG}")
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        assert c.post("/v1/videos", json=NEW).status_code == 401
        assert c.get("/healthz").status_code == 200


# --- keys ----------------------------------------------------------------------------


def test_requests_without_a_key_are_refused_once_keys_exist(keyed: TestClient) -> None:
    r = keyed.post("/v1/videos", json=NEW)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unauthorized"
    assert keyed.get(f"/v1/videos/{IMG}").status_code == 401


def test_probes_need_no_key(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_bearer_and_x_api_key_both_work(keyed: TestClient, secrets: dict[Role, str]) -> None:
    secret = secrets[Role.READ]
    assert keyed.get(f"/v1/videos/{IMG}", headers=bearer(secret)).status_code == 200
    assert keyed.get(f"/v1/videos/{IMG}", headers={"X-API-Key": secret}).status_code == 200
    lower = {"authorization": f"bearer {secret}"}
    assert keyed.get(f"/v1/videos/{IMG}", headers=lower).status_code == 200


def test_key_name_is_the_actor(keyed: TestClient, secrets: dict[Role, str]) -> None:
    write, worker = secrets[Role.WRITE], secrets[Role.WORKER]
    assert keyed.post("/v1/videos", json=NEW, headers=bearer(write)).status_code == 202
    r = keyed.post("/v1/worker/claim", json={"worker_id": "gpu-7"}, headers=bearer(worker))
    assert r.status_code == 200
    assert keyed.post(f"/v1/videos/{IMG}/cancel", headers={"X-API-Key": write}).status_code == 200
    assert actors(keyed, write) == ["write-key", "worker:gpu-7", "write-key"]
    # The feed may show a fresh write a moment late on PostgreSQL (it never skips a late commit).
    for _ in range(500):
        feed = keyed.get("/v1/events", headers=bearer(write)).json()["items"]
        if len(feed) >= 3:
            break
        time.sleep(0.01)
    assert [i["actor"] for i in feed] == ["write-key", "worker:gpu-7", "write-key"]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None


READ_CALLS = [
    Call("GET", "/v1/videos"),
    Call("GET", f"/v1/videos/{IMG}"),
    Call("GET", f"/v1/videos/{IMG}/has-video"),
    Call("GET", f"/v1/videos/{IMG}/history"),
    Call("POST", "/v1/videos/status", {"img_names": [IMG]}),
    Call("GET", "/v1/events"),
    Call("GET", "/v1/stats"),
]
WRITE_CALLS = [
    Call("POST", "/v1/videos", {"img_name": "other.png", "source_type": "scene"}),
    Call("POST", f"/v1/videos/{IMG}/cancel", {}),
    Call("POST", f"/v1/videos/{IMG}/retry", {}),
    Call("DELETE", f"/v1/videos/{IMG}"),
]
WORKER_CALLS = [
    Call("POST", "/v1/worker/claim", {"worker_id": "w1", "source_types": ["nothing"]}),
    Call("POST", f"/v1/worker/tasks/{IMG}/heartbeat", {"lease_token": "stale"}),
    Call(
        "POST",
        f"/v1/worker/tasks/{IMG}/complete",
        {"lease_token": "stale", "video_filename": "x.mp4"},
    ),
    Call(
        "POST",
        f"/v1/worker/tasks/{IMG}/fail",
        {"lease_token": "stale", "error_code": "x", "error_message": "x", "retryable": False},
    ),
]
ADMIN_CALLS = [Call("GET", "/v1/admin/projections")]

ALLOWED = {
    Role.READ: READ_CALLS,
    Role.WRITE: READ_CALLS + WRITE_CALLS,
    Role.WORKER: READ_CALLS + WORKER_CALLS,
    Role.ADMIN: READ_CALLS + WRITE_CALLS + WORKER_CALLS + ADMIN_CALLS,
}
EVERY_CALL = READ_CALLS + WRITE_CALLS + WORKER_CALLS + ADMIN_CALLS


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
def test_what_each_role_may_do(keyed: TestClient, secrets: dict[Role, str], role: Role) -> None:
    # A pending video, so that the write calls get past auth to a real answer.
    admin = bearer(secrets[Role.ADMIN])
    assert keyed.post("/v1/videos", json=NEW, headers=admin).status_code == 202
    headers = bearer(secrets[role])
    wrong: list[str] = []
    for call in EVERY_CALL:
        r = keyed.request(call.method, call.path, json=call.body, headers=headers)
        allowed = call in ALLOWED[role]
        if allowed and r.status_code in (401, 403):
            wrong.append(f"{call.method} {call.path} refused: {r.status_code}")
        if not allowed and (r.status_code != 403 or r.json()["code"] != "forbidden"):
            wrong.append(f"{call.method} {call.path} not forbidden: {r.status_code}")
    assert wrong == []


def test_roles_get_real_answers(keyed: TestClient, secrets: dict[Role, str]) -> None:
    write, worker, read = (bearer(secrets[r]) for r in (Role.WRITE, Role.WORKER, Role.READ))
    assert keyed.post("/v1/videos", json=NEW, headers=write).status_code == 202
    assert keyed.get(f"/v1/videos/{IMG}", headers=read).json()["video_status"] == "pending"
    task = keyed.post("/v1/worker/claim", json={"worker_id": "w1"}, headers=worker)
    assert task.status_code == 200
    done = keyed.post(
        f"/v1/worker/tasks/{IMG}/complete",
        json={"lease_token": task.json()["lease_token"], "video_filename": "cat.mp4"},
        headers=worker,
    )
    assert done.status_code == 200
    assert keyed.delete(f"/v1/videos/{IMG}", headers=write).json()["video_status"] == "none"


def test_revoked_key_is_refused_on_the_next_request(
    keyed: TestClient, secrets: dict[Role, str], database: Database
) -> None:
    secret = secrets[Role.WRITE]
    assert keyed.get(f"/v1/videos/{IMG}", headers=bearer(secret)).status_code == 200
    revoke_key(database, "write-key", now())
    r = keyed.get(f"/v1/videos/{IMG}", headers=bearer(secret))
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert keyed.post("/v1/videos", json=NEW, headers={"X-API-Key": secret}).status_code == 401
    assert keyed.get(f"/v1/videos/{IMG}", headers=bearer(secrets[Role.READ])).status_code == 200


def test_a_key_that_differs_only_after_its_prefix_is_refused(
    keyed: TestClient, secrets: dict[Role, str]
) -> None:
    secret = secrets[Role.ADMIN]
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert keyed.get(f"/v1/videos/{IMG}", headers=bearer(forged)).status_code == 401


def test_the_secret_is_never_stored(database: Database, secrets: dict[Role, str]) -> None:
    with database.reader.connect() as conn:
        rows = conn.execute(select(api_keys)).mappings().all()
    assert len(rows) == len(Role)
    for secret in secrets.values():
        tail = secret.split("_", 2)[2]  # the random part
        for row in rows:
            for column, value in row.items():
                text = str(value)
                assert secret not in text, column
                assert tail not in text, column


def test_a_status_read_checks_its_caller_itself(
    keyed: TestClient, secrets: dict[Role, str]
) -> None:
    """The status read checks its caller on its own connection (`keys.Access`):
    every outcome of the key, for an image that exists and one never seen."""
    created = keyed.post("/v1/videos", json=NEW, headers=bearer(secrets[Role.WRITE]))
    assert created.status_code == 202
    for name, version in ((IMG, 1), ("never-seen.png", 0)):
        ok = keyed.get(f"/v1/videos/{name}", headers=bearer(secrets[Role.READ]))
        assert ok.status_code == 200 and ok.json()["version"] == version, ok.text
        assert ok.json()["img_name"] == name
        for bad in ("vl_000000000000_nope", "not-a-key", secrets[Role.READ] + "x"):
            r = keyed.get(f"/v1/videos/{name}", headers=bearer(bad))
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", (bad, r.text)
            assert "video_status" not in r.json()
        assert keyed.get(f"/v1/videos/{name}").status_code == 401


# --- client commands check their caller in their own work ---------------------------

BAD_KEYS = ("vl_000000000000_nope", "not-a-key", "vl_x_y_z")


def test_a_request_checks_its_caller_in_its_own_statement(
    keyed: TestClient, secrets: dict[Role, str], database: Database
) -> None:
    """A request for a new image checks its caller in the statement that
    writes (`keys.ADMITTED`): nothing is written for a refused caller, a
    revoked key is refused at once, and the event's actor is the key's name."""
    for bad in (*BAD_KEYS, secrets[Role.WRITE] + "x", secrets[Role.WRITE][:-1]):
        r = keyed.post("/v1/videos", json=NEW, headers=bearer(bad))
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", (bad, r.text)
    for role in (Role.READ, Role.WORKER):
        r = keyed.post("/v1/videos", json=NEW, headers=bearer(secrets[role]))
        assert r.status_code == 403 and r.json()["code"] == "forbidden", (role, r.text)
    assert keyed.post("/v1/videos", json=NEW).status_code == 401
    status = keyed.get(f"/v1/videos/{IMG}", headers=bearer(secrets[Role.READ])).json()
    assert status["version"] == 0, "a refused caller wrote nothing"

    for role, name in ((Role.WRITE, "w.png"), (Role.ADMIN, "a.png")):
        r = keyed.post("/v1/videos", json={**NEW, "img_name": name}, headers=bearer(secrets[role]))
        assert r.status_code == 202, r.text
        assert actors(keyed, secrets[Role.READ], name) == [f"{role.value}-key"]

    revoke_key(database, "write-key", now())
    r = keyed.post(
        "/v1/videos", json={**NEW, "img_name": "late.png"}, headers=bearer(secrets[Role.WRITE])
    )
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/videos", {"img_name": "", "source_type": "scene"}),
        ("POST", "/v1/videos", {"img_name": IMG, "source_type": "scene", "generator": "nope"}),
        ("POST", "/v1/videos", "{not json"),
        ("POST", "/v1/videos/..%2Fx/cancel", None),
        ("POST", f"/v1/videos/{IMG}/retry", {"reason": 5}),
        ("DELETE", f"/v1/videos/{IMG}?reason=" + "x" * 3000, None),
    ],
    ids=["bad-body", "unknown-generator", "bad-json", "bad-name", "bad-reason", "long-reason"],
)
def test_a_command_tells_only_its_callers_what_is_wrong(
    keyed: TestClient, secrets: dict[Role, str], method: str, path: str, body: Any
) -> None:
    """What is wrong with a request goes only to a caller who may make it:
    401 without a key, 403 for a role that may not write, 422 for a writer."""
    content = body if isinstance(body, str) else None
    json_body = None if isinstance(body, str) else body

    def send(headers: dict[str, str]) -> Any:
        extra = {"Content-Type": "application/json"} if content is not None else {}
        return keyed.request(
            method, path, json=json_body, content=content, headers={**headers, **extra}
        )

    assert send({}).status_code == 401
    assert send(bearer("vl_000000000000_nope")).status_code == 401
    assert send(bearer(secrets[Role.READ])).status_code == 403
    r = send(bearer(secrets[Role.WRITE]))
    assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
