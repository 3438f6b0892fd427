"""A randomized history of mixed commands against a real server, and its checker.

In the spirit of Jepsen: client threads send random commands over real HTTP
to a `vidledger serve` subprocess, a reader follows the feed, the server is
SIGKILLed and restarted along the way, and everything seen is recorded. The
checker then holds the recorded history against the log:

- no 5xx, except 503 while the server was down or restarting;
- every acknowledged write is in the log, at the version it answered, with
  the status it answered, and no refused write left anything behind;
- each image's history is contiguous (1..n) and every step is legal in
  `app.lifecycle`, and worker writes come only from the lease's holder;
- the feed reader saw every event exactly once, each image in version order.

`Workload.run` records; `check` returns the list of violations (empty when
the history is clean). The test and `make soak` both use them.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.lifecycle import TRANSITIONS, EventType, Status

#: The statuses a worker's write may end a task in, by the worker op.
WORKER_OUTCOMES: dict[str, set[str]] = {
    "complete": {EventType.COMPLETED.value},
    "fail": {EventType.RETRY_SCHEDULED.value, EventType.FAILED.value, EventType.CANCELLED.value},
    "release": {EventType.RETRY_SCHEDULED.value, EventType.CANCELLED.value},
    "cancelled": {EventType.CANCELLED.value},
}
CLIENT_WRITES = {"request", "regenerate", "cancel", "retry", "delete"}


@dataclass
class Op:
    """One command as a client saw it."""

    id: str
    thread: int
    op: str
    img: str
    start: float
    end: float = 0.0
    #: The HTTP status, or None when no answer came (connection lost, timeout).
    status: int | None = None
    body: Any = None
    error: str | None = None
    worker_id: str | None = None
    #: The generators a claim named (None: any).
    generators: list[str] | None = None


@dataclass
class Outage:
    killed_at: float
    up_at: float = float("inf")


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    feed: list[dict[str, Any]] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)

    def acknowledged_writes(self) -> int:
        return sum(
            1
            for o in self.ops
            if o.status is not None and 200 <= o.status < 300 and o.op != "heartbeat"
        )

    def dump(self, path: Path, log: list[dict[str, Any]], problems: list[str]) -> Path:
        path.write_text(
            json.dumps(
                {
                    "problems": problems,
                    "outages": [asdict(o) for o in self.outages],
                    "ops": [asdict(o) for o in self.ops],
                    "feed": self.feed,
                    "log": log,
                },
                indent=1,
                default=str,
            )
        )
        return path


class Workload:
    """`threads` clients and one feed reader against `url`, for `seconds`.

    `restart()` is called at each planned kill time: it must SIGKILL the
    server, start it again on the same port and return once it answers.
    """

    def __init__(
        self,
        url: str,
        *,
        seconds: float,
        restart: Callable[[], None],
        threads: int = 6,
        images: int = 16,
        seed: int | None = None,
        restart_every: float = 30.0,
    ) -> None:
        self.url = url
        self.seconds = seconds
        self.restart = restart
        self.threads = threads
        self.images = [f"h{i:02d}.png" for i in range(images)]
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.restart_every = restart_every
        self.history = History()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # --- driving -------------------------------------------------------------

    def run(self) -> History:
        rng = random.Random(self.seed)
        begin = time.monotonic()
        deadline = begin + self.seconds
        kills = self._kill_times(rng, begin)
        clients = [
            threading.Thread(target=self._client, args=(i, deadline), daemon=True)
            for i in range(self.threads)
        ]
        reader = threading.Thread(target=self._reader, daemon=True)
        for t in [*clients, reader]:
            t.start()
        for at in kills:
            time.sleep(max(0.0, at - time.monotonic()))
            outage = Outage(killed_at=time.monotonic())
            with self._lock:
                self.history.outages.append(outage)
            self.restart()
            outage.up_at = time.monotonic()
        for t in clients:
            t.join()
        self._stop.set()
        reader.join()
        return self.history

    def _kill_times(self, rng: random.Random, begin: float) -> list[float]:
        """One kill in the middle third of a short run; one per `restart_every` in a long one."""
        if self.seconds <= self.restart_every * 1.5:
            return [begin + self.seconds * rng.uniform(0.35, 0.65)]
        times, at = [], begin
        while True:
            at += self.restart_every * rng.uniform(0.6, 1.4)
            if at > begin + self.seconds - 3:
                return times
            times.append(at)

    def _client(self, index: int, deadline: float) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        worker_id = f"w{index}"
        held: dict[str, str] = {}  # img -> lease token of the tasks this thread holds
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while time.monotonic() < deadline:
                if held and rng.random() < 0.5:
                    img = rng.choice(sorted(held))
                    self._worker_op(http, rng, worker_id, index, img, held)
                else:
                    self._client_op(http, rng, worker_id, index, held)

    def _client_op(
        self,
        http: httpx.Client,
        rng: random.Random,
        worker_id: str,
        index: int,
        held: dict[str, str],
    ) -> None:
        kind = rng.choices(
            ["request", "regenerate", "cancel", "retry", "delete", "claim"],
            weights=[22, 6, 14, 10, 8, 24],
        )[0]
        img = rng.choice(self.images)
        op = self._begin(index, kind, img)
        if kind in ("request", "regenerate"):
            body: dict[str, Any] = {
                "img_name": img,
                "source_type": rng.choice(["scene", "upload"]),
                "prompt": op.id,
                "regenerate": kind == "regenerate",
            }
            generator = rng.choice([None, "a", "b"])
            if generator is not None:
                body["generator"] = generator
            headers = {"Idempotency-Key": op.id} if rng.random() < 0.3 else {}
            self._send(op, lambda: http.post("/v1/videos", json=body, headers=headers))
        elif kind in ("cancel", "retry"):
            self._send(op, lambda: http.post(f"/v1/videos/{img}/{kind}", json={"reason": op.id}))
        elif kind == "delete":
            self._send(op, lambda: http.delete(f"/v1/videos/{img}", params={"reason": op.id}))
        else:
            op.worker_id = worker_id
            claim: dict[str, Any] = {
                "worker_id": worker_id,
                "lease_seconds": rng.choice([5, 5, 30]),
            }
            op.generators = rng.choice([None, ["a"], ["b"], ["a", "b"]])
            if op.generators is not None:
                claim["generators"] = op.generators
            self._send(op, lambda: http.post("/v1/worker/claim", json=claim))
            if op.status == 200:
                op.img = op.body["img_name"]
                held[op.img] = op.body["lease_token"]

    def _worker_op(
        self,
        http: httpx.Client,
        rng: random.Random,
        worker_id: str,
        index: int,
        img: str,
        held: dict[str, str],
    ) -> None:
        kind = rng.choices(
            ["complete", "fail", "heartbeat", "release", "cancelled", "abandon"],
            weights=[30, 22, 25, 10, 6, 7],
        )[0]
        token = held[img]
        if kind == "abandon":  # a worker that vanished: the reaper's to recover
            del held[img]
            return
        op = self._begin(index, kind, img)
        op.worker_id = worker_id
        path = f"/v1/worker/tasks/{img}/{kind}"
        body: dict[str, Any] = {"lease_token": token}
        if kind == "complete":
            body["video_filename"] = f"{op.id}.mp4"
        elif kind == "fail":
            body |= {
                "error_code": "test.failure",
                "error_message": op.id,
                "retryable": rng.random() < 0.7,
            }
        elif kind == "heartbeat":
            body["progress"] = round(rng.random(), 3)
        self._send(op, lambda: http.post(path, json=body))
        if kind != "heartbeat" or op.status != 200:
            held.pop(img, None)

    def _begin(self, index: int, kind: str, img: str) -> Op:
        op = Op(id=uuid.uuid4().hex[:12], thread=index, op=kind, img=img, start=time.monotonic())
        with self._lock:
            self.history.ops.append(op)
        return op

    @staticmethod
    def _send(op: Op, call: Callable[[], httpx.Response]) -> None:
        try:
            response = call()
        except httpx.HTTPError as exc:
            op.error = type(exc).__name__
            time.sleep(0.05)  # the server is down: don't spin
        else:
            op.status = response.status_code
            if response.content:
                try:
                    op.body = response.json()
                except ValueError:
                    op.body = response.text[:500]
        op.end = time.monotonic()

    def _reader(self) -> None:
        """Follow /v1/events until told to stop (the drain comes later)."""
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while not self._stop.is_set():
                if not self.read_page(http):
                    time.sleep(0.05)

    def read_page(self, http: httpx.Client) -> int:
        """One page of the feed after the last cursor seen; how many events it held."""
        params: dict[str, Any] = {"limit": 1000}
        if self.history.feed:
            params["after"] = self.history.feed[-1]["cursor"]
        try:
            response = http.get("/v1/events", params=params)
        except httpx.HTTPError:
            return 0
        if response.status_code != 200:
            if response.status_code != 503:
                self.history.feed.append({"unexpected_status": response.status_code})
            return 0
        items: list[dict[str, Any]] = response.json()["items"]
        self.history.feed.extend(items)
        return len(items)

    def drain(self, total: int, timeout: float = 30.0) -> None:
        """Read the feed until it has shown `total` events or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while len(self.history.feed) < total and time.monotonic() < deadline:
                if not self.read_page(http):
                    time.sleep(0.05)


# --- the checker -----------------------------------------------------------------


def check(history: History, log: list[dict[str, Any]], *, grace: float = 1.0) -> list[str]:
    """Every way `history` disagrees with `log` (all events, in position order)."""
    problems: list[str] = []
    streams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(log, key=lambda e: (e["img_name"], e["version"])):
        streams[e["img_name"]].append(e)
    problems += _check_streams(streams)
    problems += _check_answers(history, streams, grace)
    problems += _check_feed(history.feed, log)
    return problems


def _check_streams(streams: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems = []
    for img, events in streams.items():
        status, holder = Status.NONE.value, None
        for expected, e in enumerate(events, start=1):
            where = f"{img} v{e['version']} {e['event_type']}"
            if e["version"] != expected:
                problems.append(f"{img}: version {e['version']} where {expected} was due (a gap)")
                break
            allowed = TRANSITIONS[EventType(e["event_type"])]
            if e["from_status"] != status or allowed.get(Status(status)) != e["to_status"]:
                problems.append(f"{where}: illegal step {status} -> {e['to_status']}")
            if (
                e["event_type"] == EventType.REQUESTED.value
                and status == Status.COMPLETED.value
                and not e["data"].get("regenerate")
            ):
                problems.append(f"{where}: a completed video requested again without regenerate")
            if e["event_type"] == EventType.PROCESSING_STARTED.value:
                holder = e["actor"]
            elif e["actor"].startswith("worker:") and e["actor"] != holder:
                problems.append(f"{where}: written by {e['actor']}, but {holder} held the lease")
            if e["to_status"] != Status.PROCESSING.value:
                holder = None
            status = e["to_status"]
    return problems


def _marks(e: dict[str, Any]) -> set[str]:
    """The op id an event carries, if an op of this workload caused it: in the
    prompt of a request, the file of a completion, the error of a failure, or
    else the reason (a cancel, retry or delete)."""
    data = e.get("data") or {}
    kind = e["event_type"]
    if kind == EventType.REQUESTED.value:
        found = data.get("prompt")
    elif kind == EventType.COMPLETED.value:
        found = (data.get("video_filename") or "").removesuffix(".mp4")
    elif kind in (EventType.RETRY_SCHEDULED.value, EventType.FAILED.value):
        found = (data.get("error") or {}).get("message")
    else:
        found = e.get("reason")
    return {found} if isinstance(found, str) and _OP_ID.fullmatch(found) else set()


_OP_ID = re.compile(r"[0-9a-f]{12}")


def _check_answers(
    history: History, streams: dict[str, list[dict[str, Any]]], grace: float
) -> list[str]:
    problems = []
    marked: Counter[str] = Counter()
    for events in streams.values():
        for e in events:
            marked.update(_marks(e))
    for mark, n in marked.items():
        if n > 1:
            problems.append(f"op {mark} recorded {n} times")
    for op in history.ops:
        where = f"op {op.id} ({op.op} {op.img}, thread {op.thread})"
        if op.status is None:
            continue  # no answer: it may or may not have been recorded
        if op.status >= 500:
            down = any(
                op.end >= o.killed_at and op.start <= o.up_at + grace for o in history.outages
            )
            if op.status != 503 or not down:
                problems.append(f"{where}: answered {op.status} {op.body}")
            continue
        ok = 200 <= op.status < 300
        if not ok:
            if op.id in marked:
                problems.append(f"{where}: refused with {op.status}, yet recorded")
            continue
        if op.op == "claim":
            problems += _check_claim(op, streams.get(op.img, []), where)
        elif op.op in CLIENT_WRITES or op.op in WORKER_OUTCOMES:
            problems += _check_write(op, streams.get(op.img, []), where)
    return problems


def _check_claim(op: Op, events: list[dict[str, Any]], where: str) -> list[str]:
    if op.body is None:
        return []  # 204: nothing was due
    task = op.body
    started = [
        e
        for e in events
        if e["event_type"] == EventType.PROCESSING_STARTED.value
        and e["actor"] == f"worker:{op.worker_id}"
        and e["data"]["attempt"] == task["attempt"]
    ]
    if not started:
        return [f"{where}: claimed attempt {task['attempt']}, but no such start is in the log"]
    if op.generators is not None and task["generator"] not in op.generators:
        return [f"{where}: claimed a {task['generator']} task, asking for {op.generators}"]
    # The generation's request: the task's generation counts the requests before its start.
    requests = [e for e in events if e["event_type"] == EventType.REQUESTED.value]
    if not 1 <= task["generation"] <= len(requests):
        return [f"{where}: claimed generation {task['generation']}, which was never requested"]
    requested = requests[task["generation"] - 1]["data"]["generator"]
    if requested != task["generator"]:
        return [f"{where}: claimed a {task['generator']} task that was requested for {requested}"]
    return []


def _check_write(op: Op, events: list[dict[str, Any]], where: str) -> list[str]:
    version, answered = op.body["version"], op.body["video_status"]
    if not 1 <= version <= len(events):
        return [f"{where}: answered version {version}, but the log has {len(events)} events"]
    e = events[version - 1]
    if e["to_status"] != answered:
        return [f"{where}: answered {answered} at v{version}, the log says {e['to_status']}"]
    marks = _marks(e)
    if op.op in WORKER_OUTCOMES:
        if e["actor"] != f"worker:{op.worker_id}" or e["event_type"] not in WORKER_OUTCOMES[op.op]:
            return [f"{where}: v{version} is {e['event_type']} by {e['actor']}"]
        # A failure the client had asked to cancel becomes the cancel, without the error.
        carries_mark = op.op == "complete" or (
            op.op == "fail" and e["event_type"] != EventType.CANCELLED.value
        )
        if carries_mark and op.id not in marks:
            return [f"{where}: acknowledged at v{version}, but that event is not this op's"]
        return []
    if op.id in marks:
        return []
    # A cancel of a processing video already flagged changes nothing.
    if op.op == "cancel" and answered == Status.PROCESSING.value and op.body["cancel_requested"]:
        return []
    return [f"{where}: acknowledged at v{version}, but that event is not this op's"]


def _check_feed(feed: list[dict[str, Any]], log: list[dict[str, Any]]) -> list[str]:
    problems = [f"feed answered {f['unexpected_status']}" for f in feed if "unexpected_status" in f]
    seen = [f for f in feed if "event_id" in f]
    counts = Counter(f["event_id"] for f in seen)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        problems.append(f"feed repeated {len(repeated)} events, e.g. {repeated[:3]}")
    missing = {e["event_id"] for e in log} - set(counts)
    if missing:
        problems.append(f"feed never showed {len(missing)} events, e.g. {sorted(missing)[:3]}")
    last: dict[str, int] = {}
    for f in seen:
        if f["version"] <= last.get(f["img_name"], 0):
            problems.append(f"feed showed {f['img_name']} v{f['version']} after a later version")
        last[f["img_name"]] = max(last.get(f["img_name"], 0), f["version"])
    return problems
