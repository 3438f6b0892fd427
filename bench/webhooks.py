"""Webhook deliveries per second to a local receiver, with 1 and 8 endpoints,
next to a bare httpx POST loop (the same bodies, the same 8 threads) in the
same run; and commit-to-receipt latency while events arrive one by one.

The senders post with httpcore, httpx's own transport, which costs about a
third less CPU per POST than httpx's client: so each run also reports the
ratio to a bare httpcore loop, what dispatching costs over the POSTs alone.

The receiver is a process of its own (`bench.webhook_receiver`). Through
vidledger, each delivery is also fanned out from the log, leased, signed,
checked for its address, and recorded, on PostgreSQL.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
import httpx

from app.api.views import event_body
from app.db import migrate
from app.db.engine import open_database
from app.projections import rebuild
from app.service import Actor, VideoService
from app.service.webhook_urls import parse_networks
from app.service.webhooks import WebhookPolicy, WebhookService
from app.webhooks.dispatcher import Dispatcher
from bench.pg import scratch_database
from bench.report import Report, Row
from bench.servers import ROOT, _free_port

#: Deliveries per round: enough for a second or two of steady sending, so
#: that starting up (the first fan-out page, the senders' connections) is a
#: small part of the time.
EVENTS = 3000
SENDERS = 8
ROUNDS = 3
TARGET = 0.7


@contextmanager
def _receiver() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.webhook_receiver", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/stats", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


_stats = httpx.Client(timeout=10)  # one client: a new one per poll costs a TLS context


def _wait_for(base: str, count: int) -> None:
    """Until `count` have arrived: one long poll, no work on this side meanwhile."""
    _stats.get(f"{base}/wait/{count}", timeout=600)


def _bare(base: str, bodies: list[bytes], *, transport_only: bool = False) -> float:
    """Deliveries per second of 8 threads POSTing `bodies` with httpx (or, with
    `transport_only`, with httpcore, the transport vidledger's senders use)."""
    left = list(bodies)
    lock = threading.Lock()
    url = f"{base}/hook"
    timeout = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), 15.0)}

    def loop() -> None:
        with httpx.Client(timeout=15) as http, httpcore.ConnectionPool() as pool:
            while True:
                with lock:
                    if not left:
                        return
                    body = left.pop()
                if transport_only:
                    pool.request(
                        "POST",
                        url,
                        content=body,
                        headers=[(b"content-type", b"application/json")],
                        extensions=timeout,
                    )
                else:
                    http.post(url, content=body, headers={"content-type": "application/json"})

    threads = [threading.Thread(target=loop) for _ in range(SENDERS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(bodies) / (time.perf_counter() - start)


def _through_vidledger(base: str, endpoints: int) -> tuple[float, list[bytes]]:
    """Deliveries per second from dispatcher start to the last receipt, and the bodies."""
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=SENDERS + 4)
        rebuild.rebuild(db)
        policy = WebhookPolicy(allowed_networks=parse_networks("127.0.0.0/8"))
        hooks = WebhookService(db, policy)
        for i in range(endpoints):
            hooks.create(f"{base}/hook/{i}")
        svc = VideoService(db)
        for i in range(EVENTS // endpoints):
            svc.request_video(f"img{i}.png", "scene", Actor("bench"))
        httpx.post(f"{base}/reset")
        stop, wake = threading.Event(), threading.Event()
        dispatcher = Dispatcher(hooks, event_body, wake=wake, stop=stop, senders=SENDERS)
        thread = threading.Thread(target=dispatcher.run)
        start = time.perf_counter()
        thread.start()
        total = (EVENTS // endpoints) * endpoints
        _wait_for(base, total)
        elapsed = time.perf_counter() - start
        stop.set()
        wake.set()
        thread.join()
        with db.read() as conn:
            bodies = [
                row[0].encode()
                for row in conn.exec_driver_sql("SELECT body FROM webhook_deliveries")
            ]
        db.dispose()
    return total / elapsed, bodies


def _latency(base: str) -> list[float]:
    """Commit-to-receipt latency (ms) of 200 events appended 20 ms apart."""
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=SENDERS + 4)
        rebuild.rebuild(db)
        hooks = WebhookService(db, WebhookPolicy(allowed_networks=parse_networks("127.0.0.0/8")))
        hooks.create(f"{base}/hook/latency")
        stop, wake = threading.Event(), threading.Event()
        svc = VideoService(db, on_append=lambda _: wake.set())
        dispatcher = Dispatcher(hooks, event_body, wake=wake, stop=stop, senders=SENDERS)
        thread = threading.Thread(target=dispatcher.run)
        thread.start()
        time.sleep(0.5)
        httpx.post(f"{base}/reset")
        for i in range(200):
            svc.request_video(f"late{i}.png", "scene", Actor("bench"))
            time.sleep(0.02)
        _wait_for(base, 200)
        stop.set()
        wake.set()
        thread.join()
        db.dispose()
    latencies = _stats.get(f"{base}/latencies").json()["latencies_ms"]
    return [float(x) for x in latencies]


def _rates(base: str, endpoints: int) -> tuple[float, float, float]:
    """Deliveries per second through vidledger, of a bare httpx loop and of a
    bare httpcore loop, over ROUNDS rounds, the three alternating: drift in
    the shared machine's load lands on every side of the ratios."""
    ours = bare = transport = 0.0  # seconds per delivery, summed over the rounds
    for _ in range(ROUNDS):
        rate, bodies = _through_vidledger(base, endpoints)
        ours += 1 / rate
        bare += 1 / _bare(base, bodies)
        transport += 1 / _bare(base, bodies, transport_only=True)
    return ROUNDS / ours, ROUNDS / bare, ROUNDS / transport


def run(report: Report) -> None:
    print(
        f"webhooks: {EVENTS} deliveries to a local receiver, {SENDERS} senders, {ROUNDS} rounds",
        flush=True,
    )
    with _receiver() as base:
        for endpoints in (1, 8):
            ours, bare, transport = _rates(base, endpoints)
            ratio = ours / bare
            report.add(
                Row(
                    f"webhook deliveries, {endpoints} endpoint(s) (PostgreSQL)",
                    f"{ours:.0f} deliveries/s",
                    f"a bare httpx POST loop, {SENDERS} threads: {bare:.0f}/s",
                    f"{ratio:.2f}x",
                    target=f">= {TARGET}x",
                )
            )
            if ratio < TARGET:
                report.fail(f"webhooks with {endpoints} endpoint(s): {ratio:.2f}x < {TARGET}x")
            # What fan-out, leases, signing, checks and records cost on top of the
            # POSTs themselves: the same bodies over the senders' own transport.
            report.add(
                Row(
                    f"webhook deliveries, {endpoints} endpoint(s), next to their transport",
                    f"{ours:.0f} deliveries/s",
                    f"a bare httpcore POST loop, {SENDERS} threads: {transport:.0f}/s",
                    f"{ours / transport:.2f}x",
                )
            )
        latencies = sorted(_latency(base))
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        report.add(
            Row(
                "webhook commit-to-receipt latency (one event every 20 ms)",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                "—",
                "—",
            )
        )
