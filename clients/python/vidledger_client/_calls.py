"""Every call of the API, described once for both clients (see `Call`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vidledger_client._core import Call, Page, drop_none, segment
from vidledger_client.models import (
    Delivery,
    Endpoint,
    EndpointCreated,
    Event,
    GeneratorInfo,
    HasVideo,
    Heartbeat,
    Me,
    Stats,
    Task,
    Transition,
    VideoStatus,
)


def _status(body: Any) -> VideoStatus:
    return VideoStatus.model_validate(body)


def _page(model: Any) -> Any:
    def parse(body: Any) -> Page:
        return [model.model_validate(item) for item in body["items"]], body.get("next_cursor")

    return parse


def _video(img_name: str, action: str = "") -> str:
    return f"/v1/videos/{segment(img_name)}{action}"


def _time(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


# --- videos ---------------------------------------------------------------------------


def request_video(
    img_name: str,
    source_type: str,
    *,
    prompt: str | None = None,
    params: dict[str, Any] | None = None,
    regenerate: bool = False,
    generator: str | None = None,
    idempotency_key: str | None = None,
) -> Call[VideoStatus]:
    body = drop_none(
        img_name=img_name,
        source_type=source_type,
        prompt=prompt,
        params=params,
        generator=generator,
    )
    if regenerate:
        body["regenerate"] = True
    return Call("POST", "/v1/videos", _status, json=body, write=True, key=idempotency_key)


def get_status(
    img_name: str, *, at: datetime | str | None = None, version: int | None = None
) -> Call[VideoStatus]:
    return Call("GET", _video(img_name), _status, params=drop_none(at=_time(at), version=version))


def has_video(img_name: str) -> Call[bool]:
    return Call(
        "GET", _video(img_name, "/has-video"), lambda b: HasVideo.model_validate(b).has_video
    )


def batch(img_names: list[str]) -> Call[list[VideoStatus]]:
    def parse(body: Any) -> list[VideoStatus]:
        return [VideoStatus.model_validate(item) for item in body["items"]]

    return Call("POST", "/v1/videos/status", parse, json={"img_names": list(img_names)})


def list_videos(
    cursor: str | None,
    *,
    status: str | None = None,
    source_type: str | None = None,
    name_prefix: str | None = None,
    page_size: int = 100,
) -> Call[Page]:
    params = drop_none(
        status=status,
        source_type=source_type,
        name_prefix=name_prefix,
        limit=page_size,
        cursor=cursor,
    )
    return Call("GET", "/v1/videos", _page(VideoStatus), params=params)


def history(img_name: str, cursor: str | None, *, page_size: int = 100) -> Call[Page]:
    params = drop_none(limit=page_size, cursor=cursor)
    return Call("GET", _video(img_name, "/history"), _page(Transition), params=params)


def _reasoned(
    method: str, img_name: str, action: str, reason: str | None, key: str | None
) -> Call[VideoStatus]:
    if method == "DELETE":
        params = drop_none(reason=reason)
        return Call(method, _video(img_name), _status, params=params, write=True, key=key)
    body = drop_none(reason=reason)
    return Call(method, _video(img_name, action), _status, json=body, write=True, key=key)


def cancel(img_name: str, reason: str | None, key: str | None) -> Call[VideoStatus]:
    return _reasoned("POST", img_name, "/cancel", reason, key)


def retry(img_name: str, reason: str | None, key: str | None) -> Call[VideoStatus]:
    return _reasoned("POST", img_name, "/retry", reason, key)


def delete(img_name: str, reason: str | None, key: str | None) -> Call[VideoStatus]:
    return _reasoned("DELETE", img_name, "", reason, key)


# --- events, generators, the rest ------------------------------------------------------


def _filters(
    img_name: str | None, source_type: str | None, event_type: str | None
) -> dict[str, Any]:
    return drop_none(img_name=img_name, source_type=source_type, event_type=event_type)


def list_events(
    cursor: str | None,
    *,
    img_name: str | None = None,
    source_type: str | None = None,
    event_type: str | None = None,
    page_size: int = 500,
    tail: bool = False,
) -> Call[Page]:
    params = {**_filters(img_name, source_type, event_type), "limit": page_size}
    if tail:
        params["tail"] = "true"
    elif cursor is not None:
        params["after"] = cursor
    return Call("GET", "/v1/events", _page(Event), params=params)


def stream_params(
    img_name: str | None, source_type: str | None, event_type: str | None
) -> dict[str, Any]:
    """The stream's filters (where it resumes goes as `Last-Event-ID`)."""
    return _filters(img_name, source_type, event_type)


def generators() -> Call[list[GeneratorInfo]]:
    def parse(body: Any) -> list[GeneratorInfo]:
        return [GeneratorInfo.model_validate(item) for item in body["items"]]

    return Call("GET", "/v1/generators", parse)


def stats() -> Call[Stats]:
    return Call("GET", "/v1/stats", Stats.model_validate)


def me() -> Call[Me]:
    return Call("GET", "/v1/me", Me.model_validate)


# --- worker ---------------------------------------------------------------------------
# A worker write is not sent again once it may have arrived: its lease token
# makes a second one a `lease_lost`, not a second record, but the caller
# would see the error of a write that in fact succeeded.


def _task(img_name: str, action: str) -> str:
    return f"/v1/worker/tasks/{segment(img_name)}/{action}"


def claim(
    worker_id: str,
    lease_seconds: int | None,
    source_types: list[str] | None,
    generators: list[str] | None,
) -> Call[Task | None]:
    body = drop_none(
        worker_id=worker_id,
        lease_seconds=lease_seconds,
        source_types=source_types or None,
        generators=generators or None,
    )

    def parse(body: Any) -> Task | None:
        return None if body is None else Task.model_validate(body)

    return Call(
        "POST", "/v1/worker/claim", parse, json=body, write=True, replay_safe=False, empty=204
    )


def heartbeat(img_name: str, token: str, progress: float | None) -> Call[Heartbeat]:
    body = drop_none(lease_token=token, progress=None if progress is None else round(progress, 4))
    return Call(
        "POST", _task(img_name, "heartbeat"), Heartbeat.model_validate, json=body, write=True
    )


def _lease_write(img_name: str, action: str, body: dict[str, Any]) -> Call[Any]:
    return Call(
        "POST", _task(img_name, action), lambda b: b, json=body, write=True, replay_safe=False
    )


def complete(
    img_name: str, token: str, video_filename: str, metadata: dict[str, Any] | None
) -> Call[VideoStatus]:
    body = drop_none(lease_token=token, video_filename=video_filename, metadata=metadata)
    return Call(
        "POST", _task(img_name, "complete"), _status, json=body, write=True, replay_safe=False
    )


def fail(img_name: str, token: str, code: str, message: str, retryable: bool) -> Call[VideoStatus]:
    body = {
        "lease_token": token,
        "error_code": code,
        "error_message": message[:2000],
        "retryable": retryable,
    }
    return Call("POST", _task(img_name, "fail"), _status, json=body, write=True, replay_safe=False)


def release(img_name: str, token: str) -> Call[Any]:
    return _lease_write(img_name, "release", {"lease_token": token})


def cancelled(img_name: str, token: str) -> Call[Any]:
    return _lease_write(img_name, "cancelled", {"lease_token": token})


# --- webhooks (admin) -----------------------------------------------------------------


def _endpoint(endpoint_id: str, action: str = "") -> str:
    return f"/v1/webhooks/endpoints/{segment(endpoint_id)}{action}"


def create_endpoint(
    url: str,
    description: str | None,
    event_types: list[str] | None,
    source_types: list[str] | None,
) -> Call[EndpointCreated]:
    body = drop_none(
        url=url, description=description, event_types=event_types, source_types=source_types
    )
    return Call(
        "POST",
        "/v1/webhooks/endpoints",
        EndpointCreated.model_validate,
        json=body,
        write=True,
        replay_safe=False,  # a second one would be a second endpoint
    )


def list_endpoints(cursor: str | None, page_size: int = 100) -> Call[Page]:
    params = drop_none(cursor=cursor, limit=page_size)
    return Call("GET", "/v1/webhooks/endpoints", _page(Endpoint), params=params)


def get_endpoint(endpoint_id: str) -> Call[Endpoint]:
    return Call("GET", _endpoint(endpoint_id), Endpoint.model_validate)


def update_endpoint(endpoint_id: str, changes: dict[str, Any]) -> Call[Endpoint]:
    return Call("PATCH", _endpoint(endpoint_id), Endpoint.model_validate, json=changes, write=True)


def delete_endpoint(endpoint_id: str) -> Call[None]:
    return Call("DELETE", _endpoint(endpoint_id), lambda _: None, write=True)


def rotate_secret(endpoint_id: str) -> Call[str]:
    return Call(
        "POST",
        _endpoint(endpoint_id, "/rotate-secret"),
        lambda b: str(b["secret"]),
        write=True,
        replay_safe=False,
    )


def send_test(endpoint_id: str) -> Call[None]:
    return Call(
        "POST", _endpoint(endpoint_id, "/test"), lambda _: None, write=True, replay_safe=False
    )


def deliveries(
    endpoint_id: str, cursor: str | None, *, status: str | None = None, page_size: int = 100
) -> Call[Page]:
    params = drop_none(status=status, cursor=cursor, limit=page_size)
    return Call("GET", _endpoint(endpoint_id, "/deliveries"), _page(Delivery), params=params)


def replay_delivery(delivery_id: int) -> Call[Delivery]:
    return Call(
        "POST", f"/v1/webhooks/deliveries/{delivery_id}/replay", Delivery.model_validate, write=True
    )


def replay(
    endpoint_id: str,
    *,
    status: str | None = None,
    since: datetime | str | None = None,
    after: str | None = None,
) -> Call[int]:
    body = drop_none(status=status, since=_time(since), after=after)
    return Call(
        "POST",
        _endpoint(endpoint_id, "/replay"),
        lambda b: int(b["replayed"]),
        json=body,
        write=True,
    )
