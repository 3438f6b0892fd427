"""The webhook dispatcher, in every `vidledger serve` process.

One loop fans new events out into deliveries and leases what is due; a pool
of threads posts them. Each POST goes to the address the URL was checked at
a moment before (no second DNS lookup to rebind), is signed per Standard
Webhooks with every live secret, never follows a redirect, and counts as
delivered on a 2xx only. Any number of processes may run this: leases and
`SKIP LOCKED` give each delivery to one at a time, and a killed process's
leases run out and are taken over, sent with the same `webhook-id`.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpcore
from standardwebhooks.webhooks import Webhook

from app.errors import AppError
from app.events.types import Json
from app.service.results import FeedEvent
from app.service.webhook_urls import RefusedUrl, Target, check
from app.service.webhooks import Claimed, Outcome, WebhookService

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = b"vidledger-webhooks/1"
#: A fan-out at most this often when woken (appends come in bursts).
FAN_OUT_EVERY = 0.005
#: While deliveries are out, how soon the queue is looked at again.
BUSY_LOOK_SECONDS = 0.005
#: Longest wait a receiver's Retry-After is taken at (an hour).
RETRY_AFTER_MAX = 3600.0


def signatures(claimed: Claimed, at: datetime) -> str:
    """`v1,<signature>` for every live secret, space-separated."""
    return " ".join(
        _signer(key).sign(claimed.message_id, at, claimed.body) for key in claimed.secrets
    )


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    """A signer per secret, made once (it decodes the secret)."""
    return Webhook(secret)


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), RETRY_AFTER_MAX)


def _pinned(url: str, target: Target) -> tuple[str, bytes, dict[str, Any]]:
    """`url` aimed at the checked address, the Host header of the original
    host, and the request extensions (its TLS name)."""
    address = target.addresses[0]
    literal = f"[{address}]" if ":" in address else address
    default = 443 if target.scheme == "https" else 80
    netloc_host = f"[{target.host}]" if ":" in target.host else target.host
    host_header = netloc_host if target.port == default else f"{netloc_host}:{target.port}"
    rest = url.split("://", 1)[1]
    path = rest[rest.find("/") :] if "/" in rest else "/"
    pinned = f"{target.scheme}://{literal}:{target.port}{path}"
    extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return pinned, host_header.encode("idna"), extensions


class Dispatcher:
    """Three loops and a pool of senders, each waiting on its own database
    round trips, not on the others':

    - fan-out: woken by an append (or each `poll_seconds`), turns new events
      into deliveries;
    - claim (`run`): keeps up to `batch` leased deliveries queued for the senders;
    - record: writes finished sends, all that have piled up, in one transaction.
    """

    def __init__(
        self,
        service: WebhookService,
        render: Callable[[FeedEvent], Json],
        *,
        wake: threading.Event,
        stop: threading.Event,
        senders: int = 8,
        poll_seconds: float = 1.0,
        on_outcome: Callable[[Claimed, Outcome], None] | None = None,
    ) -> None:
        self.service = service
        self.render = render
        self.wake = wake
        self.stop = stop
        self.senders = senders
        self.poll_seconds = poll_seconds
        self.on_outcome = on_outcome
        self.token = "disp_" + secrets.token_hex(8)
        #: Leased deliveries waiting for a sender; `batch` of them at the most.
        self.batch = senders * 16
        self.queue: queue.SimpleQueue[Claimed | None] = queue.SimpleQueue()
        #: Sends finished and not yet recorded.
        self.done: queue.SimpleQueue[tuple[Claimed, Outcome]] = queue.SimpleQueue()
        #: Set when more may be due: deliveries made, an image's delivery recorded
        #: (its next one may go), or the senders running low.
        self.claim_now = threading.Event()
        #: Claimed and not yet recorded.
        self._open = 0
        self._open_lock = threading.Lock()

    def run(self) -> None:
        """Dispatch until `stop`: the claim loop here, the others in threads."""
        threads = [
            threading.Thread(target=self._sender, name=f"webhook-{i}", daemon=True)
            for i in range(self.senders)
        ]
        loops = [
            threading.Thread(target=self._fan_out_loop, name="webhook-fan-out", daemon=True),
            threading.Thread(target=self._record_loop, name="webhook-record", daemon=True),
        ]
        for thread in threads + loops:
            thread.start()
        self._claim_loop()
        for thread in loops:
            thread.join()
        for _ in threads:
            self.queue.put(None)
        for thread in threads:
            thread.join(self.service.policy.timeout_seconds + 5)
        self._record_done()

    def _turn(self, work: Callable[[], T]) -> T | None:
        """One turn of a loop: `work`'s result, or None (after a pause) if it
        failed. A loop must outlive any one bad turn, a database restart included."""
        try:
            return work()
        except AppError as exc:
            log.warning("webhooks: %s", exc.detail)
        except Exception:
            log.exception("webhooks: a dispatcher turn failed; going on")
        self.stop.wait(1.0)
        return None

    def _fan_out_loop(self) -> None:
        next_sweep = 0.0
        while not self.stop.is_set():
            self.wake.clear()
            made = self._turn(lambda: self.service.fan_out(self.render))
            if made:
                self.claim_now.set()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.poll_seconds
                if self._turn(self.service.release_stranded):
                    self.claim_now.set()
            # Appends come in bursts: one fan-out takes what a few ms bring.
            self.stop.wait(FAN_OUT_EVERY)
            if made is None:  # else there may be more at once (a page made, a row locked)
                self.wake.wait(self.poll_seconds)

    def _claim_loop(self) -> None:
        while not self.stop.is_set():
            self.claim_now.clear()
            self._turn(self._claim)
            with self._open_lock:
                busy = self._open > 0
            self.claim_now.wait(BUSY_LOOK_SECONDS if busy else self.poll_seconds)
        self.wake.set()  # the fan-out loop sees `stop` now

    def _claim(self) -> None:
        queued = self.queue.qsize()
        if queued >= self.batch // 2:
            return  # enough queued: claim when there is room for a batch worth the trip
        room = self.batch - queued
        claimed = self.service.claim(room, self.token)
        with self._open_lock:
            self._open += len(claimed)
        for item in claimed:
            self.queue.put(item)

    def _record_loop(self) -> None:
        while not self.stop.is_set():
            try:
                first = self.done.get(timeout=self.poll_seconds)
            except queue.Empty:
                continue
            self._record_done([first])
            self.claim_now.set()

    def client(self) -> httpcore.ConnectionPool:
        """HTTP connections for one sender: a pool shared by all would make them
        queue on its lock. httpcore, httpx's own transport: the sender needs a
        POST, not a client's cookies, auth flows, redirects or URL model (a
        third of a POST's CPU, where the GIL is what caps the senders)."""
        return httpcore.ConnectionPool(max_connections=16)

    def _sender(self) -> None:
        with self.client() as http:
            while self._send_next(http):
                pass

    def _send_next(self, http: httpcore.ConnectionPool) -> bool:
        item = self.queue.get()
        if item is None:
            return False
        self._send_one(http, item)
        return True

    def _send_one(self, http: httpcore.ConnectionPool, item: Claimed) -> None:
        timeout = timedelta(seconds=self.service.policy.timeout_seconds)
        if datetime.now(UTC) + timeout >= item.lease_until:
            # It waited in the queue too long (a slow receiver): its lease may end
            # mid-send, and another dispatcher take it. Leave it to be claimed again.
            with self._open_lock:
                self._open -= 1
            return
        try:
            outcome = self.send(item, http)
        except Exception:  # a sender must outlive one bad delivery; its lease runs out
            log.exception("webhooks: a delivery failed unexpectedly")
            with self._open_lock:
                self._open -= 1
            return
        self.done.put((item, outcome))
        if self.queue.qsize() < self.senders:
            self.claim_now.set()  # running low

    def _record_done(self, results: list[tuple[Claimed, Outcome]] | None = None) -> None:
        """Record `results` and every other finished send, in one transaction."""
        results = results or []
        while True:
            try:
                results.append(self.done.get_nowait())
            except queue.Empty:
                break
        if not results:
            return
        try:
            self.service.record(results)
        except AppError as exc:  # their leases run out; they are sent again
            log.warning("webhooks: recording deliveries failed: %s", exc.detail)
        finally:
            with self._open_lock:
                self._open -= len(results)
        if self.on_outcome is not None:
            for claimed, outcome in results:
                self.on_outcome(claimed, outcome)

    def send(self, claimed: Claimed, http: httpcore.ConnectionPool) -> Outcome:
        started = time.perf_counter()

        def took() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            target = check(claimed.url, self.service.policy.allowed_networks)
        except RefusedUrl as exc:
            return Outcome(None, took(), error=f"refused: {exc}")
        at = datetime.now(UTC)
        url, host, extensions = _pinned(claimed.url, target)
        seconds = self.service.policy.timeout_seconds
        extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), seconds)
        headers = [
            (b"host", host),
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT),
            (b"webhook-id", claimed.message_id.encode()),
            (b"webhook-timestamp", str(int(at.timestamp())).encode()),
            (b"webhook-signature", signatures(claimed, at).encode()),
        ]
        try:
            answer = http.request(
                "POST", url, headers=headers, content=claimed.body.encode(), extensions=extensions
            )
        except httpcore.TimeoutException:
            return Outcome(None, took(), error="timeout")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            return Outcome(None, took(), error=f"connection: {type(exc).__name__}")
        status = answer.status
        text = answer.content[:256].decode("utf-8", "replace") if answer.content else None
        wait = retry_after(_header(answer, b"retry-after")) if status in (429, 503) else None
        error = None if 200 <= status < 300 else f"http {status}"
        return Outcome(status, took(), error=error, response=text, retry_after=wait)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    """The first `name` header of `response` (names compared case-blind)."""
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
