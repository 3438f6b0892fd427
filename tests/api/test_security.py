"""Security: every route's role, constant-time key checks, hostile names, CORS,
and a log the service's own database role cannot rewrite."""

from __future__ import annotations

import re
import secrets as stdlib_secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pytest
from fastapi.testclient import TestClient

from app import keys as key_store
from app.api import create_app
from app.config import Settings
from app.db.engine import Database, open_database
from app.keys import Role, create_key
from app.service import Actor, VideoService
from tests.conftest import PG_ADMIN_DSN

OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def required_permission(method: str, path: str) -> str:
    """The API's auth rules as a table: what each route asks of a key."""
    if path.startswith("/v1/worker/"):
        return "worker"
    if path.startswith(("/v1/admin/", "/v1/webhooks/")):
        return "admin"
    if method == "GET" or path == "/v1/videos/status":
        return "read"
    return "write"


@pytest.fixture
def role_keys(database: Database) -> dict[Role, str]:
    now = datetime.now(UTC)
    return {role: create_key(database, f"k-{role.value}", role, now) for role in Role}


@pytest.fixture
def keyed(
    settings: Settings, database: Database, role_keys: dict[Role, str]
) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db=database)) as c:
        yield c


def _routes(client: TestClient) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    found = []
    for path, ops in spec["paths"].items():
        for method in ops:
            concrete = re.sub(r"\{img_name\}", "x.png", path).replace(
                "{name}", "image_video_status"
            )
            found.append((method.upper(), concrete))
    return found


def test_no_route_is_reachable_without_the_right_role(
    keyed: TestClient, role_keys: dict[Role, str]
) -> None:
    routes = _routes(keyed)
    assert len(routes) >= 20
    for method, path in routes:
        if path in OPEN_PATHS:
            assert keyed.request(method, path).status_code != 401
            continue
        if path == "/v1/events/stream":
            continue  # a stream; its auth is tested in test_stream.py
        anonymous = keyed.request(method, path, json={})
        assert anonymous.status_code == 401, (method, path)
        needed = required_permission(method, path)
        for role, secret in role_keys.items():
            r = keyed.request(method, path, json={}, headers={"Authorization": f"Bearer {secret}"})
            allowed = needed in key_store.GRANTS[role]
            if allowed:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
            else:
                assert r.status_code == 403 and r.json()["code"] == "forbidden", (
                    method,
                    path,
                    role,
                )


def test_keys_are_compared_in_constant_time(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = create_key(database, "app", Role.READ, datetime.now(UTC))
    calls: list[tuple[Any, Any]] = []
    real = stdlib_secrets.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(key_store.secrets, "compare_digest", spy)
    assert key_store.verify(database, secret) is not None
    assert key_store.verify(database, secret[:-2] + "xx") is None
    assert len(calls) == 2  # both answers came from the constant-time comparison


@pytest.mark.parametrize(
    "name",
    [
        "'; DROP TABLE video_status_events; --",
        "Robert'); --.png",
        "%00.png",
        "名前 with spaces.png",
        'a"b.png',
    ],
)
def test_sql_looking_and_unusual_names_are_stored_verbatim(client: TestClient, name: str) -> None:
    r = client.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
    assert r.status_code == 202
    # Read back through the body, not the path: starlette's TestClient decodes
    # a path twice, which a real server does not.
    [got] = client.post("/v1/videos/status", json={"img_names": [name]}).json()["items"]
    assert (got["img_name"], got["video_status"]) == (name, "pending")
    assert client.get("/v1/events").json()["items"][-1]["img_name"] == name


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a\\b", "..", ".", "a\x00b", "tab\there"])
def test_hostile_names_are_refused(client: TestClient, name: str) -> None:
    r = client.post("/v1/videos", json={"img_name": name, "source_type": "scene"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"


def test_no_cors_unless_configured(settings: Settings, database: Database) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings, db=database)) as c:
        r = c.options("/v1/videos", headers=headers)
        assert "access-control-allow-origin" not in r.headers
    allowed = settings.model_copy(update={"cors_origins": ["https://app.example"]})
    with TestClient(create_app(allowed, db=database)) as c:
        ok = c.options("/v1/videos", headers={**headers, "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = c.options("/v1/videos", headers=headers)
        assert "access-control-allow-origin" not in bad.headers


@pytest.mark.postgres
def test_the_service_can_run_with_insert_and_select_only_on_the_log(db_url: str) -> None:
    """The append-only promise does not rest on the trigger alone: the
    service's database role needs no UPDATE or DELETE on the log."""
    if not db_url.startswith("postgresql"):
        pytest.skip("database roles are PostgreSQL's")
    dbname = db_url.rsplit("/", 1)[1]
    role = f"vidledger_app_{stdlib_secrets.token_hex(4)}"
    admin = psycopg2.connect(PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN")
        cur.execute(f"GRANT SELECT, INSERT ON video_status_events TO {role}")
        cur.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON image_video_status, video_task_leases, "
            f"idempotency_keys, api_keys, projection_state TO {role}"
        )
        cur.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    db = open_database(db_url.replace("postgres@", f"{role}@"), pool_size=2)
    try:
        svc = VideoService(db)
        svc.request_video("a.png", "scene", Actor("app"))
        task = svc.claim_task("w")
        assert task is not None
        svc.complete_task("a.png", task.lease_token, "a.mp4")
        with pytest.raises(Exception, match="permission denied"), db.write() as conn:
            conn.exec_driver_sql("UPDATE video_status_events SET actor = 'x'")
        with pytest.raises(Exception, match="permission denied"), db.write() as conn:
            conn.exec_driver_sql("DELETE FROM video_status_events")
    finally:
        db.dispose()
        with admin.cursor() as cur:
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")
        admin.close()
