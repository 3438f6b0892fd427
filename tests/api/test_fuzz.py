"""Schemathesis against the app's own OpenAPI, in-process over ASGI.

Every operation gets valid and invalid input. No answer may be a 5xx, an
undocumented status code, an undocumented content type or a body that breaks
its declared schema. It runs three ways: open mode (no key exists, so every
request acts as admin), with an admin key, and with no key while a key exists
(every route but the probes must then answer a documented 401).

It uses schemathesis's Hypothesis strategies rather than its pytest loader:
`schemathesis.pytest.from_fixture` sets a private attribute that pytest 9.2
no longer has. Each operation is its own Hypothesis test, so one failure is
shrunk and reported without hiding the others.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api import create_app
from app.config import Settings
from app.db.engine import open_database
from app.keys import Role, create_key

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

FUZZ_SETTINGS = settings(
    max_examples=12,
    derandomize=True,  # the same inputs on every run: CI cannot flake on a lucky draw
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    schema: schemathesis.BaseSchema
    headers: dict[str, str]


@pytest.fixture
def target(
    sqlite_template: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Target]:
    mode: str = request.param
    db_file = tmp_path / "vidledger.db"
    shutil.copy(sqlite_template, db_file)
    url = f"sqlite:///{db_file}"
    db = open_database(url, pool_size=5)
    headers: dict[str, str] = {}
    if mode != "open":
        secret = create_key(db, "fuzzer", Role.ADMIN, datetime.now(UTC))
        if mode == "admin_key":
            headers["Authorization"] = f"Bearer {secret}"
    app = create_app(
        Settings(database_url=url, images_dir=tmp_path / "images", videos_dir=tmp_path / "videos"),
        db=db,
    )
    app.state.feed_ping_seconds = 0.05
    yield Target(schemathesis.openapi.from_asgi("/openapi.json", app), headers)
    db.dispose()


#: How long the endless event stream is read before its events are judged.
STREAM_READ_SECONDS = 0.25


def _fuzz(target: Target, operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    endless = operation.path == "/v1/events/stream"

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if endless:
            case.call_and_validate(
                headers=target.headers, checks=CHECKS, timeout=STREAM_READ_SECONDS
            )
        else:
            case.call_and_validate(headers=target.headers, checks=CHECKS)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["open", "admin_key", "no_key"], indirect=True)
def test_every_answer_matches_the_openapi(target: Target) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(target, operation, mode)
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters,
                # or only free-form strings): there is no negative case to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert not failures, "\n\n".join(failures)


# --- What the fuzzer found, pinned as plain examples -------------------------


def _problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_a_body_that_is_not_utf8_is_a_validation_error(client: TestClient) -> None:
    r = client.post(
        "/v1/videos", content=b'\xff\xfe{"img_name"', headers={"Content-Type": "application/json"}
    )
    _problem(r, 422, "validation_error")  # was 400 http_error, which no route documented
    assert r.json()["errors"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/videos/a%0Ab.png"),
        ("GET", "/v1/videos/a%0Ab.png/history"),
        ("POST", "/v1/videos/a%0Ab.png/cancel"),
        ("DELETE", "/v1/videos/a%0D.png"),
        ("POST", "/v1/worker/tasks/a%0Ab.png/release"),
    ],
)
def test_a_name_with_a_newline_is_a_validation_error_on_every_route(
    client: TestClient, method: str, path: str
) -> None:
    body = {"lease_token": "t"} if "/worker/" in path else None
    r = client.request(method, path, json=body)
    _problem(r, 422, "validation_error")  # was 404 "no such route": `.*` stops at a newline
    assert r.json()["errors"][0]["loc"] == ["path", "img_name"]


def test_a_non_ascii_lease_token_loses_the_lease_instead_of_crashing(
    client: TestClient,
) -> None:
    client.post("/v1/videos", json={"img_name": "cat.png", "source_type": "scene"})
    assert client.post("/v1/worker/claim", json={"worker_id": "w1"}).status_code == 200
    for what in ("heartbeat", "cancelled", "release"):
        r = client.post(f"/v1/worker/tasks/cat.png/{what}", json={"lease_token": "ᚠᚢᚦ"})
        _problem(r, 409, "lease_lost")  # was a 500: compare_digest refuses non-ASCII str
    assert client.get("/v1/videos/cat.png").json()["video_status"] == "processing"


@pytest.mark.parametrize(
    "body",
    [
        b'{"img_name": "\\ud800.png", "source_type": "scene"}',
        b'{"img_name": "a.png", "source_type": "scene", "params": {"k": "\\udfff"}}',
        b'{"img_name": "a.png", "source_type": "scene", "params": {"\\ud800": 1}}',
    ],
)
def test_a_lone_surrogate_is_a_validation_error(client: TestClient, body: bytes) -> None:
    r = client.post("/v1/videos", content=body, headers={"Content-Type": "application/json"})
    _problem(r, 422, "validation_error")  # was a 500: the database cannot store it
    assert client.get("/v1/stats").json()["total"] == 0  # nothing was appended
