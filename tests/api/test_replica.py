"""VIDLEDGER_READ_REPLICA_URL: status reads go to the replica, everything else
to the primary. The "replica" here is a second database holding different
rows, so the test can tell which one answered."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.db.engine import open_database
from app.service import Actor, Policy, VideoService
from tests.conftest import upgrade_and_build


@pytest.fixture
def replica_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second, migrated database of the same kind as `db_url`."""
    if db_url.startswith("sqlite"):
        target = tmp_path / "replica.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_database_factory")()
    upgrade_and_build(url)
    return url


@pytest.fixture
def replica_client(settings: Settings, replica_url: str) -> Iterator[TestClient]:
    only_on_replica = open_database(replica_url, pool_size=2)
    try:
        VideoService(only_on_replica, Policy()).request_video(
            "replica-only.png", "scene", Actor("seed")
        )
    finally:
        only_on_replica.dispose()
    app = create_app(settings.model_copy(update={"read_replica_url": replica_url}))
    with TestClient(app) as client:
        yield client


def test_status_reads_come_from_the_replica_and_writes_go_to_the_primary(
    replica_client: TestClient,
) -> None:
    body = {"img_name": "new.png", "source_type": "scene"}
    assert replica_client.post("/v1/videos", json=body).status_code == 202
    # The primary took the write (its history has it)...
    history = replica_client.get("/v1/videos/new.png/history").json()
    assert [t["to_status"] for t in history["items"]] == ["pending"]
    # ...while status reads show the replica's rows, as a lagging replica would.
    assert replica_client.get("/v1/videos/new.png").json()["video_status"] == "none"
    seen = replica_client.get("/v1/videos/replica-only.png").json()
    assert seen["video_status"] == "pending"
    batch = replica_client.post(
        "/v1/videos/status", json={"img_names": ["replica-only.png", "new.png"]}
    ).json()
    assert [s["video_status"] for s in batch["items"]] == ["pending", "none"]
    listed = replica_client.get("/v1/videos").json()
    assert [v["img_name"] for v in listed["items"]] == ["replica-only.png"]


def test_a_bad_replica_url_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="read_replica_url"):
        Settings(read_replica_url="mysql://nope")
