"""How a worker reaches the task commands: directly, or over the worker HTTP API.

The loop in `app/worker/loop.py` is written once against `TaskBackend`.
`LocalBackend` calls the service in-process (it has the database);
`RemoteBackend` calls `/v1/worker/*` of another server, for generators that
live on other machines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from app.errors import AppError, Forbidden, LeaseLost, Unauthorized, Unavailable
from app.service import Heartbeat, Task, VideoService


class TaskBackend(Protocol):
    def claim(
        self,
        worker_id: str,
        lease_seconds: int | None,
        source_types: list[str] | None,
        generators: list[str] | None,
    ) -> Task | None: ...

    def heartbeat(self, img_name: str, token: str, progress: float | None) -> Heartbeat: ...

    def complete(
        self, img_name: str, token: str, video_filename: str, metadata: dict[str, Any]
    ) -> None: ...

    def fail(self, img_name: str, token: str, code: str, message: str, retryable: bool) -> None: ...

    def cancelled(self, img_name: str, token: str) -> None: ...

    def release(self, img_name: str, token: str) -> None: ...

    def reap(self) -> int: ...

    def close(self) -> None: ...


class LocalBackend:
    """The service itself: every call is one transaction on the database."""

    def __init__(self, service: VideoService) -> None:
        self.service = service

    def claim(
        self,
        worker_id: str,
        lease_seconds: int | None,
        source_types: list[str] | None,
        generators: list[str] | None,
    ) -> Task | None:
        return self.service.claim_task(
            worker_id,
            lease_seconds=lease_seconds,
            source_types=source_types,
            generators=generators,
        )

    def heartbeat(self, img_name: str, token: str, progress: float | None) -> Heartbeat:
        return self.service.heartbeat(img_name, token, progress)

    def complete(
        self, img_name: str, token: str, video_filename: str, metadata: dict[str, Any]
    ) -> None:
        self.service.complete_task(img_name, token, video_filename, metadata=metadata)

    def fail(self, img_name: str, token: str, code: str, message: str, retryable: bool) -> None:
        self.service.fail_task(img_name, token, code, message, retryable)

    def cancelled(self, img_name: str, token: str) -> None:
        self.service.acknowledge_cancel(img_name, token)

    def release(self, img_name: str, token: str) -> None:
        self.service.release_task(img_name, token)

    def reap(self) -> int:
        return self.service.reap_expired_leases()

    def close(self) -> None:
        """The service's database belongs to whoever built it."""


class RemoteBackend:
    """The worker HTTP API of another vidledger server (role `worker` key)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach {self.http.base_url}: {exc}") from exc
        status = response.status_code
        if status < 400:
            return response
        try:
            detail = str(response.json().get("detail", ""))
            code = response.json().get("code")
        except ValueError:
            detail, code = response.text[:200], None
        message = f"{path} answered {status}: {detail}"
        if code == "lease_lost":
            raise LeaseLost(detail)
        if status == 401:
            raise Unauthorized(message)
        if status == 403:
            raise Forbidden(message)
        if status >= 500:
            raise Unavailable(message)
        raise AppError(message)

    @staticmethod
    def _task_path(img_name: str, action: str) -> str:
        return f"/v1/worker/tasks/{quote(img_name, safe='')}/{action}"

    def claim(
        self,
        worker_id: str,
        lease_seconds: int | None,
        source_types: list[str] | None,
        generators: list[str] | None,
    ) -> Task | None:
        body: dict[str, Any] = {"worker_id": worker_id}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if source_types:
            body["source_types"] = source_types
        if generators:
            body["generators"] = generators
        response = self._post("/v1/worker/claim", body)
        if response.status_code == 204:
            return None
        data = response.json()
        return Task(
            img_name=data["img_name"],
            source_type=data["source_type"],
            generator=data["generator"],
            prompt=data["prompt"],
            params=data["params"],
            generation=data["generation"],
            attempt=data["attempt"],
            lease_token=data["lease_token"],
            lease_expires_at=datetime.fromisoformat(data["lease_expires_at"]),
        )

    def heartbeat(self, img_name: str, token: str, progress: float | None) -> Heartbeat:
        body: dict[str, Any] = {"lease_token": token}
        if progress is not None:
            body["progress"] = round(progress, 4)
        data = self._post(self._task_path(img_name, "heartbeat"), body).json()
        return Heartbeat(
            lease_expires_at=datetime.fromisoformat(data["lease_expires_at"]),
            cancel_requested=data["cancel_requested"],
        )

    def complete(
        self, img_name: str, token: str, video_filename: str, metadata: dict[str, Any]
    ) -> None:
        body = {"lease_token": token, "video_filename": video_filename, "metadata": metadata}
        self._post(self._task_path(img_name, "complete"), body)

    def fail(self, img_name: str, token: str, code: str, message: str, retryable: bool) -> None:
        body = {
            "lease_token": token,
            "error_code": code,
            "error_message": message[:2000],
            "retryable": retryable,
        }
        self._post(self._task_path(img_name, "fail"), body)

    def cancelled(self, img_name: str, token: str) -> None:
        self._post(self._task_path(img_name, "cancelled"), {"lease_token": token})

    def release(self, img_name: str, token: str) -> None:
        self._post(self._task_path(img_name, "release"), {"lease_token": token})

    def reap(self) -> int:
        return 0  # the server's own reaper recovers expired leases

    def close(self) -> None:
        self.http.close()
