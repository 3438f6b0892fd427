"""Webhooks from real `vidledger serve` processes: one killed mid-delivery,
and two side by side. On SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import Processes, cli_env, wait_for
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = cli_env(
        db_url,
        tmp_path / "images",
        tmp_path / "videos",
        webhook_allowed_networks="127.0.0.0/8",
        webhook_timeout_seconds="1",
        webhook_retry_schedule="0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
        log_level="warning",
    )
    processes = Processes(tmp_path, env)
    yield processes
    processes.stop_all()


def request(url: str, img: str) -> None:
    body = {"img_name": img, "source_type": "scene"}
    assert httpx.post(f"{url}/v1/videos", json=body).status_code == 202


def test_a_dispatcher_killed_mid_delivery_redelivers_with_the_same_id(
    procs: Processes, receiver: Receiver
) -> None:
    first = procs.server("first", worker=False)
    add = httpx.post(f"{first.url}/v1/webhooks/endpoints", json={"url": receiver.url})
    assert add.status_code == 201
    receiver.delay = 0.8  # each answer takes a while: the kill lands mid-delivery
    names = [f"img{i}.png" for i in range(5)]
    for name in names:
        request(first.url, name)
    wait_for(lambda: receiver.arrived >= 1, 30, "a delivery in flight")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    receiver.delay = 0.0
    second = procs.server("second", worker=False)
    wait_for(lambda: len({r.headers["webhook-id"] for r in receiver.received}) == 5, 60)
    events = httpx.get(f"{second.url}/v1/events", params={"limit": 100}).json()["items"]
    assert {r.headers["webhook-id"] for r in receiver.received} == {e["event_id"] for e in events}
    # What the killed process had in flight is sent again, under the same id,
    # once its lease has run out.
    wait_for(
        lambda: max(Counter(r.headers["webhook-id"] for r in receiver.received).values()) >= 2,
        60,
        "a redelivery",
    )


def test_two_serve_processes_deliver_each_event_once(procs: Processes, receiver: Receiver) -> None:
    one = procs.server("one", worker=False)
    two = procs.server("two", worker=False)
    add = httpx.post(f"{one.url}/v1/webhooks/endpoints", json={"url": receiver.url})
    assert add.status_code == 201
    names = [f"img{i:02d}.png" for i in range(30)]
    for i, name in enumerate(names):
        request((one.url, two.url)[i % 2], name)
    wait_for(lambda: len(receiver.received) >= 30, 60, "thirty deliveries")
    time.sleep(1.0)  # a duplicate would arrive by now
    counts = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert len(counts) == 30
    assert max(counts.values()) == 1
    by_agent = Counter(r.headers.get("user-agent") for r in receiver.received)
    assert by_agent == {"vidledger-webhooks/1": 30}
