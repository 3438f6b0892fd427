"""`AsyncVidLedger`: the asynchronous client, the same surface as `VidLedger`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from vidledger_client import _calls as calls
from vidledger_client._core import (
    Call,
    Page,
    RetryPolicy,
    SseParser,
    raise_for,
    segment,
    user_agent,
)
from vidledger_client.errors import ApiError, ConnectionFailed, VideoFailed, WaitTimeout
from vidledger_client.models import (
    FINAL,
    Delivery,
    Endpoint,
    EndpointCreated,
    Event,
    GeneratorInfo,
    Heartbeat,
    Me,
    Stats,
    Task,
    Transition,
    VideoStatus,
)
from vidledger_client.webhooks import verify

T = TypeVar("T")
#: (`Events.list` shadows the builtin inside its class.)
EventList = list[Event]

#: Longest wait for a byte of the event stream before reconnecting (the
#: server sends a keep-alive comment every 15 s).
STREAM_READ_TIMEOUT = 45.0
#: Longest pause between two reconnects of a stream.
RECONNECT_CAP = 5.0


class AsyncVidLedger:
    """A client of one vidledger server.

    `api_key` goes as `Authorization: Bearer`. Connection errors and 429,
    502, 503, 504 answers are retried up to `max_retries` times with backoff
    (honouring `Retry-After`); every write carries an `Idempotency-Key`,
    the same on each of its retries, so a retried request never records twice.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"User-Agent": user_agent()}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )
        self.retry = RetryPolicy(max_retries=max_retries)
        self.videos = Videos(self)
        self.events = Events(self)
        self.worker = Worker(self)
        self.generators = Generators(self)
        self.webhooks = Webhooks(self)

    async def __aenter__(self) -> AsyncVidLedger:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def stats(self) -> Stats:
        return await self.run(calls.stats())

    async def me(self) -> Me:
        """The key this client uses: its name and role."""
        return await self.run(calls.me())

    # --- the machinery -----------------------------------------------------------------

    async def send(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        """Send `call`, retrying what may be retried; the last answer."""
        key = call.idempotency_key()
        attempt = 0
        while True:
            request = call.request(self.http, key)
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt > self.retry.max_retries or not self.retry.error_retryable(call, exc):
                    raise ConnectionFailed(
                        f"{call.method} {call.path}: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if attempt < self.retry.max_retries and self.retry.answer_retryable(call, response):
                attempt += 1
                await response.aclose()
                await asyncio.sleep(self.retry.delay(attempt, response))
                continue
            return response

    async def run(self, call: Call[T]) -> T:
        response = await self.send(call)
        await response.aread()
        return call.result(response)

    async def pages(self, page: Callable[[str | None], Call[Page]]) -> AsyncIterator[Any]:
        """Every item of a paged listing, page after page."""
        cursor: str | None = None
        while True:
            items, cursor = await self.run(page(cursor))
            for item in items:
                yield item
            if not items or cursor is None:
                return


class _Resource:
    def __init__(self, client: AsyncVidLedger) -> None:
        self._c = client


class Videos(_Resource):
    async def request(
        self,
        img_name: str,
        source_type: str,
        *,
        prompt: str | None = None,
        params: dict[str, Any] | None = None,
        regenerate: bool = False,
        generator: str | None = None,
        idempotency_key: str | None = None,
    ) -> VideoStatus:
        """Ask for a video of `img_name`. Raises `VideoInProgress` or `VideoExists`."""
        return await self._c.run(
            calls.request_video(
                img_name,
                source_type,
                prompt=prompt,
                params=params,
                regenerate=regenerate,
                generator=generator,
                idempotency_key=idempotency_key,
            )
        )

    async def get(
        self, img_name: str, *, at: datetime | str | None = None, version: int | None = None
    ) -> VideoStatus:
        """The status now, or as it was at a time or stream version."""
        return await self._c.run(calls.get_status(img_name, at=at, version=version))

    async def has_video(self, img_name: str) -> bool:
        return await self._c.run(calls.has_video(img_name))

    async def batch(self, img_names: list[str]) -> list[VideoStatus]:
        """The status of up to 1,000 images, in the order asked."""
        return await self._c.run(calls.batch(img_names))

    def list(
        self,
        *,
        status: str | None = None,
        source_type: str | None = None,
        name_prefix: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[VideoStatus]:
        """Every matching status, newest `updated_at` first, page after page."""
        return self._c.pages(
            lambda cursor: calls.list_videos(
                cursor,
                status=status,
                source_type=source_type,
                name_prefix=name_prefix,
                page_size=page_size,
            )
        )

    def history(self, img_name: str, *, page_size: int = 100) -> AsyncIterator[Transition]:
        """Every transition of one image, oldest first."""
        return self._c.pages(lambda cursor: calls.history(img_name, cursor, page_size=page_size))

    async def cancel(
        self, img_name: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> VideoStatus:
        return await self._c.run(calls.cancel(img_name, reason, idempotency_key))

    async def retry(
        self, img_name: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> VideoStatus:
        return await self._c.run(calls.retry(img_name, reason, idempotency_key))

    async def delete(
        self, img_name: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> VideoStatus:
        return await self._c.run(calls.delete(img_name, reason, idempotency_key))

    async def download(self, img_name: str, path: str | os.PathLike[str]) -> Path:
        """Save the image's video to `path`, streamed; a broken transfer
        resumes with Range from what arrived (in `path` + `.part`), unless
        the video changed meanwhile. Raises `NotFound` if there is no video."""
        target = Path(path)
        part = target.with_name(target.name + ".part")
        etag: str | None = None
        attempt = 0
        url = f"/v1/videos/{segment(img_name)}/content"
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            if have and etag:
                headers["If-Range"] = etag
            try:
                async with self._c.http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 416 and have:
                        part.unlink()  # what we had no longer fits the video: start over
                        continue
                    if response.status_code >= 400:
                        await response.aread()
                    raise_for(response)
                    if response.status_code != 206:
                        have = 0  # the whole video (or it changed): from the start
                    etag = response.headers.get("etag") or etag
                    with part.open("ab" if have else "wb") as out:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
                part.replace(target)
                return target
            except httpx.TransportError as exc:
                attempt += 1
                if attempt > self._c.retry.max_retries:
                    raise ConnectionFailed(f"downloading {img_name!r}: {exc}") from exc
                await asyncio.sleep(self._c.retry.delay(attempt))

    async def wait(
        self, img_name: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> VideoStatus:
        """Until the video is completed: returns its status. Raises
        `VideoFailed` if it ends failed, cancelled or deleted, and
        `WaitTimeout` after `timeout` seconds. Follows the event stream,
        and falls back to polling if the stream cannot be had."""
        deadline = None if timeout is None else time.monotonic() + timeout
        _, start = await self._c.run(calls.list_events(None, tail=True, page_size=1))
        status = await self.get(img_name)
        if status.video_status in FINAL:
            return _settled(status)
        try:
            events = self._c.events.stream(after=start, img_name=img_name, _deadline=deadline)
            async for event in events:
                if event.to_status in FINAL:
                    status = await self.get(img_name)
                    if status.video_status in FINAL:
                        return _settled(status)
        except (ConnectionFailed, ApiError):
            pass  # no stream to be had (a proxy that buffers, say): poll
        while deadline is None or time.monotonic() < deadline:
            status = await self.get(img_name)
            if status.video_status in FINAL:
                return _settled(status)
            pause = (
                poll_interval
                if deadline is None
                else min(poll_interval, deadline - time.monotonic())
            )
            await asyncio.sleep(max(0.0, pause))
        raise WaitTimeout(img_name, timeout or 0.0, status)


def _settled(status: VideoStatus) -> VideoStatus:
    if status.video_status != "completed":
        raise VideoFailed(status)
    return status


class Events(_Resource):
    async def list(
        self,
        *,
        after: str | None = None,
        img_name: str | None = None,
        source_type: str | None = None,
        event_type: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[Event]:
        """The global log in order from `after` to its current end."""
        cursor = after
        while True:
            items, cursor = await self._c.run(
                calls.list_events(
                    cursor,
                    img_name=img_name,
                    source_type=source_type,
                    event_type=event_type,
                    page_size=page_size,
                )
            )
            for item in items:
                yield item
            if len(items) < page_size:
                return

    async def tail(
        self,
        limit: int = 20,
        *,
        img_name: str | None = None,
        source_type: str | None = None,
        event_type: str | None = None,
    ) -> EventList:
        """The last `limit` events (1 to 1000), oldest first. To follow on, pass
        the last one's `.cursor` to `stream(after=…)` with the same filters."""
        items, _ = await self._c.run(
            calls.list_events(
                None,
                img_name=img_name,
                source_type=source_type,
                event_type=event_type,
                page_size=limit,
                tail=True,
            )
        )
        return items

    async def stream(
        self,
        *,
        after: str | None = None,
        img_name: str | None = None,
        source_type: str | None = None,
        event_type: str | None = None,
        _deadline: float | None = None,
    ) -> AsyncIterator[Event]:
        """The global log live, from `after` on, without end. A dropped
        connection is resumed with `Last-Event-ID`: nothing is lost or
        repeated. Each Event has its `.cursor`."""
        last = after
        failures = 0
        while _deadline is None or time.monotonic() < _deadline:
            params = calls.stream_params(img_name, source_type, event_type)
            headers = {"Last-Event-ID": last} if last else {}
            read = STREAM_READ_TIMEOUT
            if _deadline is not None:
                read = max(0.1, min(read, _deadline - time.monotonic()))
            timeout = httpx.Timeout(self._c.http.timeout.connect, read=read)
            try:
                async with self._c.http.stream(
                    "GET", "/v1/events/stream", params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    raise_for(response)
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        sse = parser.feed(line)
                        if sse is None or not sse.data:
                            continue
                        event = Event.model_validate_json(sse.data)
                        last = sse.id or event.cursor
                        failures = 0
                        yield event
            except httpx.TransportError as exc:
                failures += 1
                if failures > max(self._c.retry.max_retries, 5) and last == after:
                    raise ConnectionFailed(f"the event stream: {exc}") from exc
            await asyncio.sleep(min(RECONNECT_CAP, 0.2 * 2**failures))


class Worker(_Resource):
    """`/v1/worker/*`: what a worker does with a task (role `worker`)."""

    async def claim(
        self,
        worker_id: str,
        *,
        lease_seconds: int | None = None,
        source_types: list[str] | None = None,
        generators: list[str] | None = None,
    ) -> Task | None:
        """The oldest due task, leased to `worker_id`; None when nothing is due."""
        return await self._c.run(calls.claim(worker_id, lease_seconds, source_types, generators))

    async def heartbeat(
        self, img_name: str, lease_token: str, progress: float | None = None
    ) -> Heartbeat:
        """Extend the lease. Raises `LeaseLost` if it is no longer this worker's."""
        return await self._c.run(calls.heartbeat(img_name, lease_token, progress))

    async def complete(
        self,
        img_name: str,
        lease_token: str,
        video_filename: str,
        metadata: dict[str, Any] | None = None,
    ) -> VideoStatus:
        return await self._c.run(calls.complete(img_name, lease_token, video_filename, metadata))

    async def fail(
        self, img_name: str, lease_token: str, code: str, message: str, *, retryable: bool
    ) -> VideoStatus:
        return await self._c.run(calls.fail(img_name, lease_token, code, message, retryable))

    async def release(self, img_name: str, lease_token: str) -> None:
        """Give the task back untouched (shutting down), due again at once."""
        await self._c.run(calls.release(img_name, lease_token))

    async def cancelled(self, img_name: str, lease_token: str) -> None:
        """Acknowledge a cancel request: the video becomes `cancelled`."""
        await self._c.run(calls.cancelled(img_name, lease_token))


class Generators(_Resource):
    async def list(self) -> list[GeneratorInfo]:
        return await self._c.run(calls.generators())


class Webhooks(_Resource):
    """Webhook endpoints and their deliveries (role `admin`), and `verify`."""

    verify = staticmethod(verify)

    async def create(
        self,
        url: str,
        *,
        description: str | None = None,
        event_types: list[str] | None = None,
        source_types: list[str] | None = None,
    ) -> EndpointCreated:
        """A new endpoint; its `.secret` is shown only now."""
        return await self._c.run(calls.create_endpoint(url, description, event_types, source_types))

    def list(self) -> AsyncIterator[Endpoint]:
        return self._c.pages(calls.list_endpoints)

    async def get(self, endpoint_id: str) -> Endpoint:
        return await self._c.run(calls.get_endpoint(endpoint_id))

    async def update(self, endpoint_id: str, **changes: Any) -> Endpoint:
        """Change any of url, description, event_types, source_types, state."""
        return await self._c.run(calls.update_endpoint(endpoint_id, changes))

    async def delete(self, endpoint_id: str) -> None:
        await self._c.run(calls.delete_endpoint(endpoint_id))

    async def rotate_secret(self, endpoint_id: str) -> str:
        """A new secret; the old one keeps signing beside it for 24 hours."""
        return await self._c.run(calls.rotate_secret(endpoint_id))

    async def send_test(self, endpoint_id: str) -> None:
        await self._c.run(calls.send_test(endpoint_id))

    def deliveries(self, endpoint_id: str, *, status: str | None = None) -> AsyncIterator[Delivery]:
        return self._c.pages(lambda cursor: calls.deliveries(endpoint_id, cursor, status=status))

    async def replay_delivery(self, delivery_id: int) -> Delivery:
        return await self._c.run(calls.replay_delivery(delivery_id))

    async def replay(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        since: datetime | str | None = None,
        after: str | None = None,
    ) -> int:
        """Send again the deliveries `status="failed"`, `since` a time or `after` a cursor."""
        return await self._c.run(calls.replay(endpoint_id, status=status, since=since, after=after))
