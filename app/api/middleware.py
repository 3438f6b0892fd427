"""The API's ASGI middleware: request ids, the body size limit, HTTP metrics.

Plain ASGI, so it adds no per-request task or thread.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.metrics import Metrics
from app.logs import request_id_var

MAX_BODY_BYTES = 64 * 1024
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


async def _send_problem(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(raw)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _too_large() -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": "Content Too Large",
        "status": 413,
        "detail": f"request body is over the {MAX_BODY_BYTES // 1024} KiB limit",
        "code": "payload_too_large",
    }


#: Request ids made here: a random prefix per process, then a counter. Unique
#: across processes and restarts like a UUID, without a urandom syscall per
#: request (uuid4 showed in the status read's profile).
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


class Edge:
    """The API's own ASGI layer, one for every request: it keeps an incoming
    X-Request-ID (or makes one), exposes it to logs and returns it; refuses
    a body over `limit` bytes, declared or streamed, with a 413 problem; and
    counts and times the request by its route template (`Metrics.http`).

    One layer, not three: under load each layer of its own cost a status
    read about 30 µs of CPU, a tenth of what the read costs in all."""

    def __init__(self, app: ASGIApp, metrics: Metrics, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        id_header = (b"x-request-id", rid.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                replay = await self._read_body(scope, receive, send_with_id)
                if replay is None:
                    return
                receive = replay
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            self.metrics.http(scope, status, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The body read up front (at most `limit` + 1 bytes), to replay; None
        once a 413 is answered or the client has gone."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await _send_problem(send, 413, _too_large())
                    return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_problem(send, 413, _too_large())
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's X-Request-ID if it sent a well-formed one, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID_RE.match(candidate):
                return candidate
            break
    return _new_request_id()
