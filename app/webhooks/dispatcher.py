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
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from app.errors import AppError
from app.events.types import Json
from app.service.results import FeedEvent
from app.service.webhook_urls import RefusedUrl, Target, check
from app.service.webhooks import Claimed, Outcome, WebhookService

log = logging.getLogger(__name__)

USER_AGENT = "vidledger-webhooks/1"
#: Longest wait a receiver's Retry-After is taken at (an hour).
RETRY_AFTER_MAX = 3600.0


def signatures(claimed: Claimed, at: datetime) -> str:
    """`v1,<signature>` for every live secret, space-separated."""
    return " ".join(
        Webhook(key).sign(claimed.message_id, at, claimed.body) for key in claimed.secrets
    )


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


def _pinned(url: str, target: Target) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` aimed at the checked address, with the Host header (and TLS name)
    of the original host."""
    address = target.addresses[0]
    literal = f"[{address}]" if ":" in address else address
    default = 443 if target.scheme == "https" else 80
    netloc_host = f"[{target.host}]" if ":" in target.host else target.host
    host_header = netloc_host if target.port == default else f"{netloc_host}:{target.port}"
    rest = url.split("://", 1)[1]
    path = rest[rest.find("/") :] if "/" in rest else "/"
    pinned = f"{target.scheme}://{literal}:{target.port}{path}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


class Dispatcher:
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
        self.http = httpx.Client(timeout=service.policy.timeout_seconds, follow_redirects=False)
        self._busy = 0
        self._lock = threading.Lock()
        self._freed = threading.Event()

    def run(self) -> None:
        with ThreadPoolExecutor(self.senders, thread_name_prefix="webhook") as pool:
            while not self.stop.is_set():
                try:
                    self.service.fan_out(self.render)
                    free = self.senders - self._in_flight()
                    claimed = self.service.claim(free, self.token) if free > 0 else []
                except AppError as exc:
                    log.warning("webhooks: %s", exc.detail)
                    self.stop.wait(1.0)
                    continue
                for item in claimed:
                    with self._lock:
                        self._busy += 1
                    pool.submit(self._deliver, item)
                if claimed and len(claimed) == free:
                    continue  # more may be due: look again once a sender frees up
                self.wake.wait(self.poll_seconds)
                self.wake.clear()
        self.http.close()

    def _in_flight(self) -> int:
        with self._lock:
            return self._busy

    def _deliver(self, claimed: Claimed) -> None:
        try:
            outcome = self.send(claimed)
            try:
                self.service.record(claimed, outcome)
            except AppError as exc:  # the lease runs out; the delivery is sent again
                log.warning("webhooks: recording a delivery failed: %s", exc.detail)
            if self.on_outcome is not None:
                self.on_outcome(claimed, outcome)
        finally:
            with self._lock:
                self._busy -= 1
            self.wake.set()

    def send(self, claimed: Claimed) -> Outcome:
        started = time.perf_counter()

        def took() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            target = check(claimed.url, self.service.policy.allowed_networks)
        except RefusedUrl as exc:
            return Outcome(None, took(), error=f"refused: {exc}")
        at = datetime.now(UTC)
        url, headers, extensions = _pinned(claimed.url, target)
        headers |= {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": claimed.message_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signatures(claimed, at),
        }
        try:
            answer = self.http.post(
                url, content=claimed.body.encode(), headers=headers, extensions=extensions
            )
        except httpx.TimeoutException:
            return Outcome(None, took(), error="timeout")
        except httpx.HTTPError as exc:
            return Outcome(None, took(), error=f"connection: {type(exc).__name__}")
        text = answer.text[:256] if answer.content else None
        wait = (
            retry_after(answer.headers.get("retry-after"))
            if answer.status_code in (429, 503)
            else None
        )
        error = None if 200 <= answer.status_code < 300 else f"http {answer.status_code}"
        return Outcome(answer.status_code, took(), error=error, response=text, retry_after=wait)
