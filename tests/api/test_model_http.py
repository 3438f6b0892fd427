"""A model of `app.lifecycle` driven through HTTP: client and worker endpoints in any order.

Hypothesis picks commands on a few fixed image names (so they collide), each
one is sent over HTTP, and the answer's status code and problem `code` must
be what the model predicts. After every step, the status read
(`GET /v1/videos/{img}`) of every image must equal the model; at the end,
the history of each image must be the events the model appended, the status
as of each version must be the model's snapshot of then, and the projection
must equal the fold of the log.

Time is the application's clock, made virtual here: `VideoService.clock` is
its documented injection point. It starts a day ahead of the database clock
(so a fresh request is due at once, as it is in real life) and only moves when
the `advance` rule says so, 10 s at a time. With a backoff base and cap of
10 s, a retry is due between 5 and 10 s after its failure: never before the
next `advance`, always after it. Leases last 30 s, so three advances without
a heartbeat lose one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.service import VideoService

#: The fixed names; each run prefixes them so runs never share a stream.
#: Spaces, '%', '?', '#' and 'é' check that every route quotes and unquotes alike.
#: (No '%' followed by two hex digits: Starlette's TestClient unquotes the path a
#: second time, which a real server does not.)
NAMES = ["a.png", "b b.png", "100% é?#.png"]
MAX_ATTEMPTS = 3
LEASE_SECONDS = 30
STEP_SECONDS = 10  # one `advance`; equal to the backoff cap (see the module docstring)
BACKOFF_SECONDS = 10.0
WORKER = "w-model"

#: Mostly the current lease token; a stale or made-up one checks the fencing.
TOKEN_CHOICES = st.sampled_from(["current", "current", "current", "stale", "bogus"])


@dataclass
class Img:
    """What the model knows of one image."""

    name: str
    kind: str
    status: str = "none"
    events: list[str] = field(default_factory=list)
    generation: int = 0
    attempts: int = 0
    has_video: bool = False
    video_filename: str | None = None
    prompt: str | None = None
    source_type: str | None = None
    cancel_requested: bool = False
    error: tuple[str, bool] | None = None  # (code, retryable)
    #: Virtual seconds from which a pending video may be claimed; None unless pending.
    due_at: float | None = None
    #: When a retry was scheduled at virtual time t, its not_before is in [t+5, t+10).
    retry_window: tuple[float, float] | None = None
    token: str | None = None
    lease_expires: float | None = None
    progress: float | None = None
    old_tokens: list[str] = field(default_factory=list)
    #: The status body the model expects at each version (1-based).
    snapshots: list[dict[str, Any]] = field(default_factory=list)

    @property
    def version(self) -> int:
        return len(self.events)


@pytest.fixture
def model_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "max_attempts": MAX_ATTEMPTS,
            "lease_seconds": LEASE_SECONDS,
            "backoff_base_seconds": BACKOFF_SECONDS,
            "backoff_cap_seconds": BACKOFF_SECONDS,
        }
    )


@pytest.fixture
def model_client(model_settings: Settings, database: Database) -> Iterator[TestClient]:
    app = create_app(model_settings, db=database)
    with TestClient(app) as c:
        yield c


def _path(name: str) -> str:
    return f"/v1/videos/{quote(name, safe='')}"


def _task_path(name: str, what: str) -> str:
    return f"/v1/worker/tasks/{quote(name, safe='')}/{what}"


class VideoModel(RuleBasedStateMachine):
    """Set up per test by `_machine`: `client` and `runs` are class attributes."""

    client: TestClient
    runs: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        run = next(self.runs)
        self.svc: VideoService = self.client.app.state.service  # type: ignore[attr-defined]
        self.epoch = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1, hours=run)
        self.now = 0.0
        self.svc.clock = lambda: self.epoch + timedelta(seconds=self.now)
        prefix = f"r{run}-"
        self.imgs = [Img(name=prefix + n, kind=f"m{run}x{i}") for i, n in enumerate(NAMES)]
        self.keys = itertools.count()
        #: Images changed by the current step: the invariant reads each one alone.
        self.changed: set[str] = set()
        #: Successful idempotent writes: (method, path, json, key, status, body).
        self.replayable: list[tuple[str, str, dict[str, Any] | None, str, int, Any]] = []

    # --- helpers ---------------------------------------------------------------

    def time(self, seconds: float) -> datetime:
        return self.epoch + timedelta(seconds=seconds)

    def at(self, seconds: float) -> str:
        return self.time(seconds).isoformat().replace("+00:00", "Z")

    def expected_body(self, img: Img) -> dict[str, Any]:
        error = None
        if img.error is not None:
            error = {"code": img.error[0], "retryable": img.error[1]}
        return {
            "img_name": img.name,
            "source_type": img.source_type,
            "has_video": img.has_video,
            "video_status": img.status,
            "video_filename": img.video_filename if img.has_video else None,
            "video_url": f"{_path(img.name)}/content" if img.has_video else None,
            "prompt": img.prompt,
            "generation": img.generation,
            "attempts": img.attempts,
            "error": error,
            "cancel_requested": img.cancel_requested,
            "version": img.version,
        }

    def check_body(self, img: Img, body: dict[str, Any]) -> None:
        got = {k: body[k] for k in self.expected_body(img)}
        if got["error"] is not None:
            got["error"] = {"code": got["error"]["code"], "retryable": got["error"]["retryable"]}
        assert got == self.expected_body(img), (img.name, img.events)
        if img.status == "processing":
            assert body["progress"] == img.progress
        else:
            assert body["progress"] is None
        if img.status == "pending":
            assert body["not_before"] is not None
            if img.retry_window is not None:
                low, high = img.retry_window
                not_before = datetime.fromisoformat(body["not_before"])
                assert self.time(low) <= not_before < self.time(high)
        else:
            assert body["not_before"] is None
        assert (body["requested_at"] is None) == (img.generation == 0)

    def appended(self, img: Img, event_type: str) -> None:
        img.events.append(event_type)
        self.changed.add(img.name)
        img.snapshots.append(self.expected_body(img))

    def refused(self, response: Any, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code, response.text

    def drop_lease(self, img: Img) -> None:
        if img.token is not None:
            img.old_tokens.append(img.token)
        img.token = None
        img.lease_expires = None
        img.progress = None

    def lease_valid(self, img: Img, token: str) -> bool:
        return (
            img.status == "processing"
            and token == img.token
            and img.lease_expires is not None
            and img.lease_expires > self.now
        )

    def pick_token(self, img: Img, choice: str) -> str:
        if choice == "current" and img.token is not None:
            return img.token
        if choice == "stale" and img.old_tokens:
            return img.old_tokens[-1]
        return "f" * 32

    def pick(self, data: st.DataObject, *statuses: str) -> Img:
        """Any image, but mostly one in `statuses`: the deep states get exercised,
        not only the refusals."""
        likely = [i for i, img in enumerate(self.imgs) if img.status in statuses]
        # Draw an index, not an Img: a failing case then prints short.
        return self.imgs[data.draw(st.sampled_from(likely * 3 + list(range(len(self.imgs)))))]

    def idem_key(self) -> str:
        return f"key-{next(self.keys)}"

    # --- client commands -------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Never-seen images read as `none`; then some are requested, so that a
        run whose random subset of rules lacks `request` still has work to do."""
        for img in self.imgs:
            self.check_body(img, self.client.get(_path(img.name)).json())
        for i in data.draw(st.sets(st.integers(0, len(NAMES) - 1), min_size=1)):
            self.request_video(self.imgs[i], regenerate=False, prompt=True)

    @rule(data=st.data(), regenerate=st.booleans(), prompt=st.booleans())
    def request(self, data: st.DataObject, regenerate: bool, prompt: bool) -> None:
        img = self.pick(data, "none", "failed", "cancelled", "completed")
        self.request_video(img, regenerate=regenerate, prompt=prompt)

    def request_video(self, img: Img, *, regenerate: bool, prompt: bool) -> None:
        body: dict[str, Any] = {"img_name": img.name, "source_type": img.kind}
        if regenerate:
            body["regenerate"] = True
        if prompt:
            body["prompt"] = f"prompt {img.version}"
        key = self.idem_key()
        r = self.client.post("/v1/videos", json=body, headers={"Idempotency-Key": key})
        if img.status in ("pending", "processing"):
            self.refused(r, 409, "video_in_progress")
            return
        if img.status == "completed" and not regenerate:
            self.refused(r, 409, "video_exists")
            return
        assert r.status_code == 202, r.text
        assert r.headers["location"] == _path(img.name)
        img.status = "pending"
        img.generation += 1
        img.attempts = 0
        img.error = None
        img.cancel_requested = False
        img.source_type = img.kind
        img.prompt = body.get("prompt")
        img.due_at = -1.0  # stamped by the database clock, a day behind ours
        img.retry_window = None
        self.appended(img, "VideoRequested")
        self.check_body(img, r.json())
        self.replayable.append(("POST", "/v1/videos", body, key, 202, r.json()))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        img = self.pick(data, "pending", "processing")
        key = self.idem_key()
        r = self.client.post(f"{_path(img.name)}/cancel", headers={"Idempotency-Key": key})
        if img.status == "pending":
            img.status = "cancelled"
            img.due_at = img.retry_window = None
            self.appended(img, "VideoCancelled")
        elif img.status == "processing" and not img.cancel_requested:
            img.cancel_requested = True
            self.appended(img, "VideoCancelRequested")
        elif img.status != "processing":
            self.refused(r, 409, "invalid_transition")
            return
        assert r.status_code == 200, r.text
        self.check_body(img, r.json())
        self.replayable.append(("POST", f"{_path(img.name)}/cancel", None, key, 200, r.json()))

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        img = self.pick(data, "failed", "cancelled")
        r = self.client.post(f"{_path(img.name)}/retry", json={"reason": "again"})
        if img.status not in ("failed", "cancelled"):
            self.refused(r, 409, "invalid_transition")
            return
        assert r.status_code == 202, r.text
        img.status = "pending"
        img.attempts = 0
        img.error = None
        img.due_at = -1.0
        img.retry_window = None
        self.appended(img, "VideoRetryRequested")
        self.check_body(img, r.json())

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        img = self.pick(data, "completed", "failed", "cancelled")
        r = self.client.delete(_path(img.name), params={"reason": "gone"})
        if img.status not in ("completed", "failed", "cancelled"):
            self.refused(r, 409, "invalid_transition")
            return
        assert r.status_code == 200, r.text
        img.status = "none"
        img.has_video = False
        img.video_filename = None
        img.error = None
        img.cancel_requested = False
        self.appended(img, "VideoDeleted")
        self.check_body(img, r.json())

    @precondition(lambda self: bool(self.replayable))
    @rule(data=st.data(), same_body=st.booleans())
    def replay(self, data: st.DataObject, same_body: bool) -> None:
        """An Idempotency-Key sent again: the first answer, or 422 for another body."""
        method, path, body, key, status, first = data.draw(st.sampled_from(self.replayable))
        if not same_body:
            body = {**(body or {}), "reason": "something else"}
            if path == "/v1/videos":
                body = {k: v for k, v in body.items() if k != "reason"}
                body["prompt"] = "another prompt"
        r = self.client.request(method, path, json=body, headers={"Idempotency-Key": key})
        if not same_body:
            self.refused(r, 422, "idempotency_key_reused")
            return
        assert r.status_code == status, r.text
        assert r.headers.get("idempotent-replayed") == "true"
        assert r.json() == first

    # --- the worker ------------------------------------------------------------

    def claimed(self, img: Img, task: dict[str, Any]) -> None:
        assert task["img_name"] == img.name
        assert task["attempt"] == img.attempts + 1
        assert task["generation"] == img.generation
        assert task["source_type"] == img.kind
        assert task["lease_expires_at"] == self.at(self.now + LEASE_SECONDS)
        img.status = "processing"
        img.attempts += 1
        img.due_at = img.retry_window = None
        img.token = task["lease_token"]
        img.lease_expires = self.now + LEASE_SECONDS
        img.progress = 0.0
        self.appended(img, "VideoProcessingStarted")

    def due(self, img: Img) -> bool:
        return img.status == "pending" and img.due_at is not None and img.due_at <= self.now

    @rule(data=st.data())
    def claim_one(self, data: st.DataObject) -> None:
        """A claim restricted to one image's source_type: that image, if it is due."""
        img = self.pick(data, "pending")
        r = self.client.post(
            "/v1/worker/claim",
            json={"worker_id": WORKER, "source_types": [img.kind], "lease_seconds": LEASE_SECONDS},
        )
        if not self.due(img):
            assert r.status_code == 204, r.text
            assert r.content == b""
            return
        assert r.status_code == 200, r.text
        self.claimed(img, r.json())

    @rule()
    def claim_any(self) -> None:
        """A claim over all of this run's images: one of the due ones, or 204."""
        r = self.client.post(
            "/v1/worker/claim",
            json={"worker_id": WORKER, "source_types": [img.kind for img in self.imgs]},
        )
        due = [img for img in self.imgs if self.due(img)]
        if not due:
            assert r.status_code == 204, r.text
            return
        assert r.status_code == 200, r.text
        task = r.json()
        (img,) = [img for img in due if img.name == task["img_name"]]
        self.claimed(img, task)

    @rule(data=st.data(), choice=TOKEN_CHOICES, progress=st.sampled_from([0.25, 0.5, 1.0, None]))
    def heartbeat(self, data: st.DataObject, choice: str, progress: float | None) -> None:
        img = self.pick(data, "processing")
        token = self.pick_token(img, choice)
        body: dict[str, Any] = {"lease_token": token}
        if progress is not None:
            body["progress"] = progress
        r = self.client.post(_task_path(img.name, "heartbeat"), json=body)
        if not self.lease_valid(img, token):
            self.refused(r, 409, "lease_lost")
            return
        assert r.status_code == 200, r.text
        img.lease_expires = self.now + LEASE_SECONDS
        if progress is not None:
            img.progress = progress
            self.changed.add(img.name)
        assert r.json() == {
            "lease_expires_at": self.at(img.lease_expires),
            "cancel_requested": img.cancel_requested,
        }

    def finish(self, img: Img, what: str, choice: str, extra: dict[str, Any]) -> Any:
        """Send a fenced worker write; None if the model predicts lease_lost."""
        token = self.pick_token(img, choice)
        r = self.client.post(_task_path(img.name, what), json={"lease_token": token, **extra})
        if not self.lease_valid(img, token):
            self.refused(r, 409, "lease_lost")
            return None
        assert r.status_code == 200, r.text
        self.drop_lease(img)
        return r

    @rule(data=st.data(), choice=TOKEN_CHOICES)
    def complete(self, data: st.DataObject, choice: str) -> None:
        img = self.pick(data, "processing")
        filename = f"{img.name}.g{img.generation}.mp4"
        r = self.finish(img, "complete", choice, {"video_filename": filename})
        if r is None:
            return
        img.status = "completed"
        img.has_video = True
        img.video_filename = filename
        img.error = None
        img.cancel_requested = False
        self.appended(img, "VideoCompleted")
        self.check_body(img, r.json())

    def failed_attempt(self, img: Img, code: str, retryable: bool) -> str:
        """What a failed attempt leads to: a retry, a failure, or the cancel asked for."""
        if retryable and img.cancel_requested:
            # The client asked to stop; a retry would run it again (as the reaper knows).
            img.status = "cancelled"
            img.cancel_requested = False
            return "VideoCancelled"
        img.error = (code, retryable)
        img.cancel_requested = False
        if retryable and img.attempts < MAX_ATTEMPTS:
            img.status = "pending"
            img.due_at = self.now + BACKOFF_SECONDS
            img.retry_window = (self.now + BACKOFF_SECONDS / 2, self.now + BACKOFF_SECONDS)
            return "VideoRetryScheduled"
        img.status = "failed"
        return "VideoFailed"

    @rule(data=st.data(), choice=TOKEN_CHOICES, retryable=st.booleans())
    def fail(self, data: st.DataObject, choice: str, retryable: bool) -> None:
        img = self.pick(data, "processing")
        extra = {"error_code": "generator.crashed", "error_message": "boom", "retryable": retryable}
        r = self.finish(img, "fail", choice, extra)
        if r is None:
            return
        self.appended(img, self.failed_attempt(img, "generator.crashed", retryable))
        self.check_body(img, r.json())

    @rule(data=st.data(), choice=TOKEN_CHOICES)
    def cancelled(self, data: st.DataObject, choice: str) -> None:
        img = self.pick(data, "processing")
        r = self.finish(img, "cancelled", choice, {})
        if r is None:
            return
        img.status = "cancelled"
        img.cancel_requested = False
        self.appended(img, "VideoCancelled")
        self.check_body(img, r.json())

    @rule(data=st.data(), choice=TOKEN_CHOICES)
    def release(self, data: st.DataObject, choice: str) -> None:
        img = self.pick(data, "processing")
        asked_to_cancel = img.cancel_requested
        r = self.finish(img, "release", choice, {})
        if r is None:
            return
        img.cancel_requested = False
        if asked_to_cancel:
            # The worker stopped and the client wants no video: done, not queued again.
            img.status = "cancelled"
            self.appended(img, "VideoCancelled")
        else:
            img.status = "pending"
            img.attempts = max(0, img.attempts - 1)
            img.due_at = self.now
            img.retry_window = None
            self.appended(img, "VideoRetryScheduled")
        self.check_body(img, r.json())

    # --- time and the reaper ---------------------------------------------------

    @rule()
    def advance(self) -> None:
        self.now += STEP_SECONDS

    @rule()
    def reap(self) -> None:
        """The reaper (not an HTTP route): expired leases become a retry, a failure or a cancel."""
        self.svc.reap_expired_leases()
        for img in self.imgs:
            if img.token is None or img.lease_expires is None or img.lease_expires > self.now:
                continue
            self.drop_lease(img)
            self.appended(img, self.failed_attempt(img, "lease.expired", True))

    # --- reads -----------------------------------------------------------------

    @invariant()
    def status_reads_equal_the_model(self) -> None:
        """Every image through the batch read, and each changed one through its own GET."""
        r = self.client.post("/v1/videos/status", json={"img_names": [i.name for i in self.imgs]})
        assert r.status_code == 200, r.text
        for img, body in zip(self.imgs, r.json()["items"], strict=True):
            self.check_body(img, body)
        for img in self.imgs:
            if img.name in self.changed:
                one = self.client.get(_path(img.name))
                assert one.status_code == 200, one.text
                self.check_body(img, one.json())
        self.changed.clear()

    @rule(i=st.integers(0, len(NAMES) - 1), data=st.data())
    def history_and_past(self, i: int, data: st.DataObject) -> None:
        img = self.imgs[i]
        r = self.client.get(f"{_path(img.name)}/history", params={"limit": 1000})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [t["event_type"] for t in items] == img.events
        assert [t["version"] for t in items] == list(range(1, img.version + 1))
        status = "none"
        for t in items:
            assert t["from_status"] == status
            status = t["to_status"]
        assert status == img.status
        if img.version:
            v = data.draw(st.integers(1, img.version))
            past = self.client.get(_path(img.name), params={"version": v})
            assert past.status_code == 200, past.text
            snap = img.snapshots[v - 1]
            got = {k: past.json()[k] for k in snap}
            if got["error"] is not None:
                got["error"] = {k: got["error"][k] for k in ("code", "retryable")}
            assert got == snap

    def teardown(self) -> None:
        r = self.client.post("/v1/admin/projections/image_video_status/verify")
        assert r.status_code == 200, r.text
        assert r.json()["ok"], r.json()["differences"]


@pytest.mark.slow
def test_http_api_follows_the_model(model_client: TestClient, tmp_path: Path) -> None:
    machine = type(
        "VideoModelRun", (VideoModel,), {"client": model_client, "runs": itertools.count()}
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize(
    ("stop", "body", "expected"),
    [
        ("release", {}, "cancelled"),
        ("fail", {"error_code": "gpu.oom", "error_message": "x", "retryable": True}, "cancelled"),
        ("fail", {"error_code": "bad.image", "error_message": "x", "retryable": False}, "failed"),
    ],
)
def test_a_cancel_request_survives_the_worker_stopping(
    client: TestClient, stop: str, body: dict[str, Any], expected: str
) -> None:
    """Found by the model: a release or a retryable failure after a cancel
    request used to queue the video again, and the cancel was forgotten."""
    client.post("/v1/videos", json={"img_name": "cat.png", "source_type": "scene"})
    token = client.post("/v1/worker/claim", json={"worker_id": "w1"}).json()["lease_token"]
    assert client.post("/v1/videos/cat.png/cancel").json()["cancel_requested"] is True
    r = client.post(f"/v1/worker/tasks/cat.png/{stop}", json={"lease_token": token, **body})
    assert r.status_code == 200, r.text
    assert r.json()["video_status"] == expected
    assert r.json()["cancel_requested"] is False
    assert client.post("/v1/worker/claim", json={"worker_id": "w2"}).status_code == 204
