"""How a worker reaches the task commands: directly, or over the worker HTTP API.

The loop in `app/worker/loop.py` is written once against `TaskBackend`.
`LocalBackend` calls the service in-process (it has the database);
`RemoteBackend` calls `/v1/worker/*` of another server, for generators that
live on other machines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import vidledger_client as remote
from vidledger_client import VidLedger

from app.errors import AppError, Forbidden, LeaseLost, Unauthorized, Unavailable
from app.service import Heartbeat, Task, VideoService

T = TypeVar("T")


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
    """The worker HTTP API of another vidledger server (role `worker` key),
    through `vidledger_client`: its retries, and its errors turned back into
    the ones the loop handles (`LeaseLost`, `Unavailable`, …)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.client = VidLedger(base_url, api_key, timeout=timeout)

    def _call(self, what: Callable[[], T]) -> T:
        try:
            return what()
        except remote.LeaseLost as exc:
            raise LeaseLost(exc.detail) from exc
        except remote.Unauthorized as exc:
            raise Unauthorized(str(exc)) from exc
        except remote.Forbidden as exc:
            raise Forbidden(str(exc)) from exc
        except (remote.Unavailable, remote.ServerError) as exc:
            raise Unavailable(str(exc)) from exc
        except remote.ConnectionFailed as exc:
            raise Unavailable(f"cannot reach {self.client.http.base_url}: {exc}") from exc
        except remote.ApiError as exc:
            raise AppError(str(exc)) from exc

    def claim(
        self,
        worker_id: str,
        lease_seconds: int | None,
        source_types: list[str] | None,
        generators: list[str] | None,
    ) -> Task | None:
        task = self._call(
            lambda: self.client.worker.claim(
                worker_id,
                lease_seconds=lease_seconds,
                source_types=source_types,
                generators=generators,
            )
        )
        if task is None:
            return None
        return Task(
            img_name=task.img_name,
            source_type=task.source_type,
            generator=task.generator,
            prompt=task.prompt,
            params=task.params,
            generation=task.generation,
            attempt=task.attempt,
            lease_token=task.lease_token,
            lease_expires_at=task.lease_expires_at,
        )

    def heartbeat(self, img_name: str, token: str, progress: float | None) -> Heartbeat:
        beat = self._call(lambda: self.client.worker.heartbeat(img_name, token, progress))
        return Heartbeat(
            lease_expires_at=beat.lease_expires_at, cancel_requested=beat.cancel_requested
        )

    def complete(
        self, img_name: str, token: str, video_filename: str, metadata: dict[str, Any]
    ) -> None:
        self._call(lambda: self.client.worker.complete(img_name, token, video_filename, metadata))

    def fail(self, img_name: str, token: str, code: str, message: str, retryable: bool) -> None:
        self._call(
            lambda: self.client.worker.fail(img_name, token, code, message, retryable=retryable)
        )

    def cancelled(self, img_name: str, token: str) -> None:
        self._call(lambda: self.client.worker.cancelled(img_name, token))

    def release(self, img_name: str, token: str) -> None:
        self._call(lambda: self.client.worker.release(img_name, token))

    def reap(self) -> int:
        return 0  # the server's own reaper recovers expired leases

    def close(self) -> None:
        self.client.close()
