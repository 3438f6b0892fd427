"""Composition of a worker from settings: embedded in `serve`, or standalone.

This is where the loop, its backend, its generator and its wake-ups
(a wake probe on PostgreSQL, the service's append hook in-process) are
put together.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from app.config import Settings
from app.events.types import RecordedEvent
from app.lifecycle import Status
from app.service import VideoService
from app.worker.backend import LocalBackend, TaskBackend
from app.worker.generators import VideoGenerator
from app.worker.loop import Worker, WorkerConfig


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WakeOnPending:
    """A service `on_append` hook that wakes in-process workers when work arrives."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, recorded: list[RecordedEvent]) -> None:
        if any(e.to_status is Status.PENDING for e in recorded):
            self.event.set()


def build_worker(
    settings: Settings,
    backend: TaskBackend,
    generators: Mapping[str, VideoGenerator],
    *,
    worker_id: str | None = None,
    concurrency: int = 1,
    source_types: list[str] | None = None,
    wake: threading.Event | None = None,
) -> Worker:
    config = WorkerConfig(
        worker_id=worker_id or default_worker_id(),
        images_dir=settings.images_dir,
        videos_dir=settings.videos_dir,
        concurrency=concurrency,
        lease_seconds=settings.lease_seconds,
        source_types=source_types,
        grace_seconds=settings.shutdown_grace_seconds,
        task_timeout_seconds=settings.task_timeout_seconds,
        reap_seconds=settings.reap_interval_seconds,
    )
    return Worker(backend, generators, config, wake=wake)


@dataclass
class RunningWorker:
    """A worker running in a background thread (embedded in `serve`)."""

    worker: Worker
    thread: threading.Thread

    def stop(self) -> None:
        self.worker.stop.set()
        self.worker.wake.set()
        self.thread.join(self.worker.config.grace_seconds + 35)


def start_embedded(
    settings: Settings,
    service: VideoService,
    wake: threading.Event,
    generators: Mapping[str, VideoGenerator],
    concurrency: int = 1,
) -> RunningWorker:
    """Run the worker loop in a thread of this process, woken by local appends
    and, on PostgreSQL, by other processes' appends too."""
    worker = build_worker(
        settings, LocalBackend(service), generators, concurrency=concurrency, wake=wake
    )
    service.db.backend.start_listener(
        settings.database_url, lambda status: wake_if_pending(wake, status), worker.stop
    )
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    return RunningWorker(worker, thread)


def wake_if_pending(wake: threading.Event, to_status: str) -> None:
    if to_status in ("", Status.PENDING.value):  # "" means: might have missed some
        wake.set()
