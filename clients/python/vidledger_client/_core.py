"""What the sync and the async client share: each API call described once
(`Call`), when a call may be sent again (`RetryPolicy`), how an answer
becomes a value or an `ApiError`, and a Server-Sent Events parser."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from vidledger_client.errors import error_for

T = TypeVar("T")

#: A page of a listing: its items, and the cursor to continue from.
Page = tuple[list[Any], str | None]

#: Answers that say "try again later" when the request did nothing.
RETRY_ALWAYS = frozenset({429, 503})
#: Answers from a proxy in between: the request may have reached the server.
RETRY_IF_SAFE = frozenset({502, 504})
#: Errors raised before the request left: resending cannot record twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The longest `Retry-After` honoured, in seconds.
RETRY_AFTER_CAP = 60.0


def segment(value: str) -> str:
    """One path segment: an image name may hold any character but `/`."""
    return quote(value, safe="")


def drop_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API, and what its answer becomes."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    #: A write: sent with an Idempotency-Key, the same on each of its retries.
    write: bool = False
    #: May be resent after it may have reached the server (a read, or a write
    #: the server de-duplicates by its Idempotency-Key).
    replay_safe: bool = True
    #: An empty answer with this status parses as None (`claim`'s 204).
    empty: int | None = None
    #: An Idempotency-Key the caller chose, instead of a new one.
    key: str | None = None

    def request(self, client: httpx.Client | httpx.AsyncClient, key: str | None) -> httpx.Request:
        headers = {"Idempotency-Key": key} if key else {}
        return client.build_request(
            self.method, self.path, params=self.params or None, json=self.json, headers=headers
        )

    def idempotency_key(self) -> str | None:
        return (self.key or uuid.uuid4().hex) if self.write else None

    def result(self, response: httpx.Response) -> T:
        if self.empty is not None and response.status_code == self.empty:
            return self.parse(None)
        raise_for(response)
        return self.parse(response.json() if response.content else None)


def raise_for(response: httpx.Response) -> None:
    """Raise the `ApiError` an answer of 400 or more stands for."""
    if response.status_code < 400:
        return
    if not response.is_closed:
        response.read()  # a streamed answer: its problem body
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    raise error_for(
        response.status_code,
        body,
        response.headers.get("x-request-id"),
        fallback=response.reason_phrase,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_retries` more tries, with exponential backoff and jitter,
    a `Retry-After` honoured."""

    max_retries: int = 2
    backoff: float = 0.5
    cap: float = 8.0

    def answer_retryable(self, call: Call[Any], response: httpx.Response) -> bool:
        status = response.status_code
        return status in RETRY_ALWAYS or (status in RETRY_IF_SAFE and call.replay_safe)

    def error_retryable(self, call: Call[Any], exc: httpx.TransportError) -> bool:
        return isinstance(exc, NOT_SENT) or call.replay_safe

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds before retry number `attempt` (1, 2, …)."""
        wait: float = min(self.cap, self.backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        told = retry_after(response.headers.get("retry-after")) if response is not None else None
        return max(wait, told) if told is not None else wait


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), RETRY_AFTER_CAP)


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str


class SseParser:
    """Server-Sent Events from lines (the WHATWG rules this API uses: `id`,
    `event`, `data`, comments; `retry` ignored)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """One line, without its end; an event when a blank line ends one."""
        if not line:
            if not self._data and self._event is None:
                return None
            made = SseEvent(self._id, self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return made
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def user_agent() -> str:
    from vidledger_client import __version__

    return f"vidledger-client/{__version__} httpx/{httpx.__version__}"
