"""Verify, online rebuild, the v1 -> v2 schema change, and upcasting, on both databases."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, insert, pool, text, update

from app.api.views import status_body
from app.cli import main
from app.db import migrate
from app.db.backend import backend_of
from app.db.engine import Database, open_database
from app.db.tables import events, image_status
from app.projections import bulk_replay, rebuild, verify
from app.projections import status as projection
from app.service import Actor, VideoService
from app.service.queries import VideoQueries

ME = Actor("tester")


def lifecycle(svc: VideoService, n: int, prefix: str = "img") -> list[str]:
    """A mix of histories: completed, failed, cancelled, pending, regenerated."""
    names = []
    for i in range(n):
        name = f"{prefix}{i}.png"
        names.append(name)
        # Text COPY must escape, as a rebuild writes it: tab, newline, backslash, `\N`.
        prompt = f"p{i}" if i % 3 else f"p{i}\tta\nb\\N back\\slash\r ü"
        svc.request_video(name, "scene" if i % 2 else "upload", ME, prompt=prompt)
    for i in range(len(names)):
        if i % 5 == 4:
            continue  # stays pending
        task = svc.claim_task("w")
        assert task is not None
        if i % 5 == 0:
            svc.complete_task(task.img_name, task.lease_token, f"{task.img_name}.mp4")
        elif i % 5 == 1:
            svc.fail_task(task.img_name, task.lease_token, "image.unreadable", "bad", False)
        elif i % 5 == 2:
            svc.cancel_video(task.img_name, ME)
            svc.acknowledge_cancel(task.img_name, task.lease_token)
        else:
            svc.complete_task(task.img_name, task.lease_token, f"{task.img_name}.mp4")
            svc.request_video(task.img_name, "scene", ME, regenerate=True)
    return names


# --- drift -------------------------------------------------------------------------


def test_drift_is_found_named_and_repaired_by_rebuild(
    db_url: str,
    service: VideoService,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", db_url)
    lifecycle(service, 10)
    assert main(["projections", "verify"]) == 0
    with database.write() as conn:  # an operator "fixes" things by hand
        conn.execute(
            update(image_status)
            .where(image_status.c.img_name == "img0.png")
            .values(video_status="failed", has_video=False)
        )
        conn.execute(delete(image_status).where(image_status.c.img_name == "img1.png"))
    capsys.readouterr()
    assert main(["projections", "verify"]) == 1
    printed = capsys.readouterr().out
    assert "img0.png" in printed and "video_status" in printed and "has_video" in printed
    assert "img1.png" in printed
    assert "img2.png" not in printed
    assert main(["projections", "rebuild", "--batch", "100"]) == 0
    assert main(["projections", "verify"]) == 0
    status = status_body(VideoQueries(database).status("img0.png"))
    assert (status["video_status"], status["has_video"]) == ("completed", True)


def test_verify_api_reports_differences(
    client: TestClient, service: VideoService, database: Database
) -> None:
    lifecycle(service, 4)
    assert client.post("/v1/admin/projections/image_video_status/verify").json()["ok"] is True
    with database.write() as conn:
        conn.execute(
            update(image_status).where(image_status.c.img_name == "img2.png").values(attempts=99)
        )
    body = client.post("/v1/admin/projections/image_video_status/verify").json()
    assert body["ok"] is False and body["checked"] == 4
    [diff] = body["differences"]
    assert diff["img_name"] == "img2.png"
    assert diff["columns"]["attempts"]["actual"] == 99
    assert client.post("/v1/admin/projections/nope/verify").json()["code"] == "not_found"


# --- online rebuild ---------------------------------------------------------------------


def test_rebuild_equals_the_incremental_projection(
    service: VideoService, database: Database
) -> None:
    lifecycle(service, 25)
    with database.read() as conn:
        before = {
            r["img_name"]: dict(r)
            for r in conn.execute(text("SELECT * FROM image_video_status")).mappings()
        }
    report = rebuild.rebuild(database, batch=7)
    assert report.rows == 25
    with database.read() as conn:
        after = {
            r["img_name"]: dict(r)
            for r in conn.execute(text("SELECT * FROM image_video_status")).mappings()
        }
    strip = lambda rows: {k: {c: v for c, v in r.items() if c != "id"} for k, r in rows.items()}  # noqa: E731
    assert strip(after) == strip(before)
    assert verify.verify(database).ok


def test_a_parallel_rebuild_equals_the_incremental_projection(
    service: VideoService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_replay, "PARALLEL_MIN_EVENTS", 0)  # small data, parallel path
    lifecycle(service, 30)
    report = rebuild.rebuild(database, batch=4, parallel=3)
    assert (report.rows, report.events) == (30, verify.verify(database).events)
    assert verify.verify(database).ok


def test_rebuild_under_load_refuses_no_write_and_ends_clean(
    service: VideoService, database: Database
) -> None:
    lifecycle(service, 50, prefix="old")
    stop = threading.Event()
    refused: list[Exception] = []
    pauses: list[float] = []
    done: list[int] = []

    def load(t: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"load{t}-{i}.png"
            try:
                started = time.perf_counter()
                service.request_video(name, "scene", ME)
                pauses.append(time.perf_counter() - started)
                task = service.claim_task(f"w{t}", source_types=["scene"])
                if task is not None:
                    service.complete_task(task.img_name, task.lease_token, "v.mp4")
            except Exception as exc:  # a refused write, or worse
                refused.append(exc)
            i += 1
        done.append(i)

    threads = [threading.Thread(target=load, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    report = rebuild.rebuild(database, batch=200)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(60)
    assert not refused, refused[:3]
    assert sum(done) > 0
    result = verify.verify(database)
    assert result.ok, [d.as_json() for d in result.differences[:3]]
    assert result.checked == 50 + sum(done)
    print(
        f"\n[{database.writer.dialect.name}] rebuild under load: {report.events} events, "
        f"{report.catch_up_passes} catch-up passes, "
        f"appends held back {report.swap_seconds * 1000:.1f} ms for the swap; "
        f"longest request_video during the run {max(pauses) * 1000:.1f} ms "
        f"over {len(pauses)} appends"
    )


def test_an_interrupted_rebuild_leaves_the_live_table_alone(
    service: VideoService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle(service, 8)

    def boom(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rebuild, "_final_swap", boom)
    with pytest.raises(KeyboardInterrupt):
        rebuild.rebuild(database, batch=3)
    monkeypatch.undo()
    assert verify.verify(database).ok
    infos = VideoQueries(database).projections()
    assert infos[0].state == "ok"
    assert rebuild.rebuild(database).rows == 8  # and it can simply be run again


# --- the v1 -> v2 schema change ------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    url: str = request.getfixturevalue("pg_database_factory")()
    return url


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _old_event(
    img: str, version: int, kind: str, frm: str, to: str, data: dict[str, Any], at: datetime
) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "img_name": img,
        "version": version,
        "event_type": kind,
        "schema_version": 1 if kind != "VideoRequested" else 2,
        "from_status": frm,
        "to_status": to,
        "data": data,
        "actor": "old-app",
        "recorded_at": at,
    }


def test_upgrade_from_the_previous_revision_backfills_timings_by_replay(
    old_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(old_url, "0002")  # what a deployment of the previous release has
    requested = {"source_type": "scene", "prompt": None, "params": {"fps": 24}, "regenerate": False}
    started = {"worker_id": "w", "lease_expires_at": T0.isoformat(), "attempt": 1}
    rows = [
        _old_event("a.png", 1, "VideoRequested", "none", "pending", requested, T0),
        _old_event(
            "a.png",
            2,
            "VideoProcessingStarted",
            "pending",
            "processing",
            started,
            T0 + timedelta(seconds=4),
        ),
        _old_event(
            "a.png",
            3,
            "VideoCompleted",
            "processing",
            "completed",
            {"video_filename": "a.mp4", "metadata": {}},
            T0 + timedelta(seconds=10.5),
        ),
        _old_event("b.png", 1, "VideoRequested", "none", "pending", requested, T0),
    ]
    engine = create_engine(old_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        for _i, row in enumerate(rows, start=1):
            conn.execute(insert(events).values(**row, tx_id=backend_of(conn).transaction_id()))
        # The old projection's rows, as projection v1 wrote them (no timings).
        for img, st, version, has in (
            ("a.png", "completed", 3, True),
            ("b.png", "pending", 1, False),
        ):
            conn.execute(
                text(
                    "INSERT INTO image_video_status (img_name, has_video, video_status, "
                    "video_filename, source_type, generation, attempts, cancel_requested, "
                    "version, last_position) "
                    "VALUES (:n, :h, :s, :f, 'scene', 1, :a, false, :v, :v)"
                ),
                {
                    "n": img,
                    "h": has,
                    "s": st,
                    "f": "a.mp4" if has else None,
                    "a": 1 if has else 0,
                    "v": version,
                },
            )
    engine.dispose()

    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", old_url)
    assert main(["db", "upgrade"]) == 0  # migration 0003, then the rebuild by replay
    db = open_database(old_url)
    try:
        q = VideoQueries(db)
        a, b = status_body(q.status("a.png")), status_body(q.status("b.png"))
        assert (a["queued_seconds"], a["generation_seconds"]) == (4.0, 6.5)
        assert (b["queued_seconds"], b["generation_seconds"]) == (None, None)
        [info] = q.projections()
        assert (info.version, info.state) == (projection.VERSION, "ok")
        assert verify.verify(db).ok
    finally:
        db.dispose()


def test_readyz_is_503_while_the_projection_is_stale(
    client: TestClient, database: Database
) -> None:
    assert client.get("/readyz").status_code == 200
    with database.write() as conn:
        conn.execute(text("UPDATE projection_state SET version = 1"))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "unavailable"
    assert "image_video_status" in r.json()["detail"]
    rebuild.rebuild(database)
    assert client.get("/readyz").status_code == 200


# --- upcasting ---------------------------------------------------------------------


def test_v1_requested_events_read_correctly_everywhere(
    client: TestClient, database: Database
) -> None:
    """A fixture of v1 rows, as the first release wrote them (no params)."""
    v1 = {"source_type": "upload", "prompt": "zoom", "regenerate": False}
    with database.write() as conn:
        conn.execute(
            insert(events).values(
                event_id=uuid.uuid4(),
                img_name="legacy.png",
                version=1,
                event_type="VideoRequested",
                schema_version=1,
                from_status="none",
                to_status="pending",
                data=v1,
                actor="v1-app",
                recorded_at=T0,
                tx_id=backend_of(conn).transaction_id(),
            )
        )
    # history upcasts
    [item] = client.get("/v1/videos/legacy.png/history").json()["items"]
    assert item["schema_version"] == 1
    assert item["data"]["params"] == {"duration_seconds": 3.0, "fps": 24, "max_size": 1280}
    # verify folds it (and sees the table has no row for it yet), rebuild reads it
    report = verify.verify(database)
    assert [d.img_name for d in report.differences] == ["legacy.png"]
    rebuild.rebuild(database)
    assert verify.verify(database).ok
    status = client.get("/v1/videos/legacy.png").json()
    assert (status["video_status"], status["source_type"], status["prompt"]) == (
        "pending",
        "upload",
        "zoom",
    )
    # a worker gets the upcast params, and the row in the log is unchanged
    task = client.post("/v1/worker/claim", json={"worker_id": "w"}).json()
    assert task["params"]["fps"] == 24
    with database.read() as conn:
        stored = conn.execute(
            text("SELECT schema_version, data FROM video_status_events WHERE version = 1")
        ).one()
    data = stored.data if isinstance(stored.data, dict) else json.loads(stored.data)
    assert stored.schema_version == 1 and "params" not in data
