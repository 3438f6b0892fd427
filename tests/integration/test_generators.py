"""Named generators: the generators file, routing a request to its generator,
and workers that claim only what they run. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.cli import main
from app.config import Settings
from app.db.engine import Database
from app.errors import ConfigError
from app.events import store
from app.lifecycle import EventType
from app.service import Actor, GeneratorNames, Policy, VideoService
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker.backend import LocalBackend
from app.worker.generators import catalog
from app.worker.loop import Worker, WorkerConfig
from tests.integration.processes import TINY, make_png, wait_for

TWO = """
default = "fast"

[generators.fast]
kind = "kenburns"

[generators.other]
kind = "kenburns"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generators.toml"
    path.write_text(text)
    return path


# --- the file -------------------------------------------------------------------------


def test_without_a_file_there_is_the_built_in_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    found = catalog.load(None)
    assert (found.names, found.default) == (("kenburns",), "kenburns")


def test_generators_toml_in_the_working_folder_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, TWO)
    found = catalog.load(None)
    assert (found.names, found.default) == (("fast", "other"), "fast")
    assert {e.kind for e in found.entries.values()} == {"kenburns"}


def test_kinds_come_from_the_entry_point_group() -> None:
    assert {"kenburns", "cog", "command"} <= set(catalog.kinds())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[generators.svd]\nkind = 'cog'\n", "generators.svd.url: Field required"),
        ("[generators.svd]\nkind = 'cog'\nurl = 'gpu-1:5000'\n", "generators.svd.url: Value"),
        ("[generators.svd]\nkind = 'cgo'\n", "generators.svd.kind: unknown kind 'cgo'"),
        ("[generators.svd]\nurl = 'http://x'\n", "generators.svd.kind: missing"),
        (
            "[generators.svd]\nkind = 'cog'\nurl = 'http://x'\ntimeout = 9\n",
            "generators.svd.timeout: unknown key",
        ),
        (
            "[generators.svd]\nkind = 'cog'\nurl = 'http://x'\ninput = { image = '{img}' }\n",
            "generators.svd.input.image: unknown placeholder {img}",
        ),
        ("[generators.kb]\nkind = 'kenburns'\nfps = 3\n", "generators.kb.fps: unknown key"),
        ("[generators.Big]\nkind = 'kenburns'\n", "generators.Big: a name must match"),
        ("default = 'svd'\n[generators.kb]\nkind = 'kenburns'\n", "default: 'svd' is not"),
        ("defualt = 'kb'\n[generators.kb]\nkind = 'kenburns'\n", "defualt: unknown key"),
        ("default = 'kb'\n", "generators: declare at least one"),
        ("[generators.kb\nkind = 'kenburns'\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_generator_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        catalog.load(write(tmp_path, text))
    detail = caught.value.detail
    assert detail.startswith("generators file generators.toml: ")
    assert message in detail
    assert "\n" not in detail
    assert str(tmp_path) not in detail


def test_a_missing_file_that_was_configured_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"generators file nope\.toml: no such file"):
        catalog.load(tmp_path / "nope.toml")


def test_a_worker_asked_for_an_unknown_generator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown generator 'svd'; configured: fast, other"):
        catalog.load(write(tmp_path, TWO)).select(["svd"])


# --- the CLI ----------------------------------------------------------------------------


def test_generators_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIDLEDGER_GENERATORS_FILE", str(write(tmp_path, TWO)))
    assert main(["generators", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {"name": "fast", "kind": "kenburns", "default": True},
        {"name": "other", "kind": "kenburns", "default": False},
    ]
    assert main(["generators", "list"]) == 0
    table = capsys.readouterr().out
    assert "fast" in table and "other" in table and "yes" in table


def test_a_bad_file_stops_the_cli_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[generators.svd]\nkind = 'cog'\n")
    monkeypatch.setenv("VIDLEDGER_GENERATORS_FILE", str(bad))
    assert main(["generators", "list"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == "error: generators file generators.toml: generators.svd.url: Field required"
    )


# --- the API --------------------------------------------------------------------------


@pytest.fixture
def two(settings: Settings, database: Database, tmp_path: Path) -> Iterator[TestClient]:
    settings.generators_file = write(tmp_path, TWO)
    with TestClient(create_app(settings, db=database)) as c:
        yield c


def post(client: TestClient, name: str, **extra: Any) -> Any:
    return client.post("/v1/videos", json={"img_name": name, "source_type": "scene", **extra})


def test_get_generators_lists_name_kind_and_default(two: TestClient) -> None:
    assert two.get("/v1/generators").json() == {
        "items": [
            {"name": "fast", "kind": "kenburns", "default": True},
            {"name": "other", "kind": "kenburns", "default": False},
        ]
    }


def test_a_request_names_its_generator_or_gets_the_default(two: TestClient) -> None:
    assert post(two, "a.png").json()["generator"] == "fast"
    assert post(two, "b.png", generator="other").json()["generator"] == "other"
    assert two.get("/v1/videos/b.png").json()["generator"] == "other"
    assert two.get("/v1/videos/never.png").json()["generator"] is None
    requested = two.get("/v1/videos/b.png/history").json()["items"][0]
    assert requested["data"]["generator"] == "other"
    assert requested["schema_version"] == 3


def test_an_unknown_generator_is_422_naming_the_known_ones(two: TestClient) -> None:
    r = post(two, "a.png", generator="sora")
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "validation_error"
    assert "unknown generator 'sora'; known: fast, other" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "generator"]
    assert two.get("/v1/videos/a.png").json()["video_status"] == "none"  # nothing recorded
    assert post(two, "a.png", generator="Not A Name").status_code == 422


def test_retry_keeps_the_generator_and_a_regeneration_may_change_it(two: TestClient) -> None:
    post(two, "a.png", generator="other")
    task = two.post("/v1/worker/claim", json={"worker_id": "w1"}).json()
    assert task["generator"] == "other"
    fail = {"lease_token": task["lease_token"], "error_code": "x.y", "error_message": "no"}
    two.post("/v1/worker/tasks/a.png/fail", json={**fail, "retryable": False})
    assert two.post("/v1/videos/a.png/retry", json={}).json()["generator"] == "other"
    task = two.post("/v1/worker/claim", json={"worker_id": "w1"}).json()
    two.post(
        "/v1/worker/tasks/a.png/complete",
        json={"lease_token": task["lease_token"], "video_filename": "a.mp4"},
    )
    again = post(two, "a.png", regenerate=True, generator="fast").json()
    assert (again["generator"], again["generation"]) == ("fast", 2)


def test_a_claim_takes_only_the_generators_it_names(two: TestClient) -> None:
    post(two, "old.png", generator="other")
    post(two, "new.png", generator="fast")
    claim = {"worker_id": "w1", "generators": ["fast"]}
    task = two.post("/v1/worker/claim", json=claim).json()
    assert (task["img_name"], task["generator"]) == ("new.png", "fast")
    assert two.post("/v1/worker/claim", json=claim).status_code == 204
    both = {"worker_id": "w2", "generators": ["fast", "other"]}
    assert two.post("/v1/worker/claim", json=both).json()["img_name"] == "old.png"


def test_the_oldest_due_of_several_generators_is_claimed_first(two: TestClient) -> None:
    for i in range(6):
        post(two, f"{i}.png", generator=("fast", "other")[i % 2])
    claim = {"worker_id": "w1", "generators": ["other", "fast"]}
    order = [two.post("/v1/worker/claim", json=claim).json()["img_name"] for _ in range(6)]
    assert order == [f"{i}.png" for i in range(6)]


# --- workers side by side -----------------------------------------------------------


def test_workers_restricted_to_a_generator_never_run_the_others(
    database: Database, tmp_path: Path
) -> None:
    found = catalog.load(write(tmp_path, TWO))
    images, videos = tmp_path / "images", tmp_path / "videos"
    svc = VideoService(
        database,
        Policy(lease_seconds=10, generators=GeneratorNames(found.names, found.default)),
        files=VideoFiles(videos),
    )
    names = {f"img{i:02d}.png": ("fast", "other")[i % 2] for i in range(20)}
    for name, generator in names.items():
        make_png(images, name, (32, 32))
        svc.request_video(name, "scene", Actor("app"), params=TINY, generator=generator)
    workers = []
    for gen in ("fast", "other"):
        for n in range(2):
            cfg = WorkerConfig(f"{gen}-{n}", images, videos, poll_seconds=0.05)
            workers.append(Worker(LocalBackend(svc), found.select([gen]), cfg))
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    q = VideoQueries(database)
    try:
        wait_for(lambda: all(q.status(n).row.video_status.value == "completed" for n in names), 120)
    finally:
        for w in workers:
            w.stop.set()
            w.wake.set()
        for t in threads:
            t.join(30)
    with database.read() as conn:
        for name, generator in names.items():
            events = store.read_stream(conn, name)
            started = [e for e in events if e.event_type is EventType.PROCESSING_STARTED]
            assert [e.data["worker_id"].rsplit("-", 1)[0] for e in started] == [generator]
            assert events[-1].data["metadata"]["generator"] == generator


def test_stats_and_metrics_break_the_queue_and_failures_down_by_generator(
    two: TestClient,
) -> None:
    for name, generator in [("a.png", "fast"), ("b.png", "fast"), ("c.png", "other")]:
        post(two, name, generator=generator)
    task = two.post("/v1/worker/claim", json={"worker_id": "w", "generators": ["other"]}).json()
    two.post(
        f"/v1/worker/tasks/{task['img_name']}/fail",
        json={
            "lease_token": task["lease_token"],
            "error_code": "provider.rejected",
            "error_message": "no",
            "retryable": False,
        },
    )
    stats = two.get("/v1/stats").json()
    assert stats["by_generator"] == {"fast": {"pending": 2}, "other": {"failed": 1}}
    assert stats["queue_by_generator"]["fast"]["depth"] == 2
    assert stats["queue_by_generator"]["fast"]["due"] == 2
    assert "other" not in stats["queue_by_generator"]
    assert stats["failures_by_generator"] == {"other": {"provider.rejected": 1}}
    assert stats["due"] == 2

    metrics = two.get("/metrics").text
    assert 'vidledger_generator_queue_due{generator="fast"} 2.0' in metrics
    assert 'vidledger_generator_videos{generator="other",status="failed"} 1.0' in metrics
    assert (
        'vidledger_generator_failed_videos{code="provider.rejected",generator="other"} 1.0'
        in metrics
    )


def test_a_package_adds_a_kind_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed distribution of its own (not vidledger) that declares a kind.
    site = tmp_path / "site"
    (site / "vl_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "vl_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vl-plugin\nVersion: 1.0\n"
    )
    (site / "vl_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[vidledger.generators]\nstill = vl_plugin:build\n"
    )
    (site / "vl_plugin.py").write_text(
        "from app.worker.generators.kenburns import KenBurnsGenerator\n"
        "def build(name, settings):\n"
        "    gen = KenBurnsGenerator(name)\n"
        "    gen.frames_per_second = settings.get('fps', 1)\n"
        "    return gen\n"
    )
    monkeypatch.syspath_prepend(str(site))
    found = catalog.load(write(tmp_path, "[generators.poster]\nkind = 'still'\nfps = 2\n"))
    entry = found.entries["poster"]
    assert (entry.kind, entry.generator.name) == ("still", "poster")
    assert "still" in catalog.kinds()
