"""The worker loop: claim due tasks, generate, heartbeat, record each step.

One loop, two ways to run it: embedded in `vidledger serve` (a thread) or
standalone (`vidledger worker`). It reaches the task commands through a
`TaskBackend`, so the same loop also drives a remote server.

Threads: the loop thread claims and reaps; each task runs in its own thread
with a heartbeat thread beside it. A task stops early when the heartbeat
learns of a cancel request, when its lease is lost, when it runs past the
task timeout, or when shutdown's grace period ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from app.errors import AppError, LeaseLost, Unavailable
from app.service import Task
from app.video_files import VideoFiles
from app.worker.backend import TaskBackend
from app.worker.generators import (
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    VideoGenerator,
    resolve_image,
)

log = logging.getLogger("app.worker")
T = TypeVar("T")

#: Wait between tries to record a result while the database is unreachable.
RECORD_RETRY_SECONDS = 1.0
#: Past a generator's own timeout, how long the loop waits before stopping it.
TIMEOUT_MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    images_dir: Path
    videos_dir: Path
    concurrency: int = 1
    lease_seconds: int | None = None
    source_types: list[str] | None = None
    #: Idle wait between claims when nothing wakes the loop.
    poll_seconds: float = 1.0
    #: How often the expired-lease reaper runs.
    reap_seconds: float = 5.0
    #: How long shutdown waits for running tasks before releasing them.
    grace_seconds: float = 10.0
    #: A generation running longer than this fails with `generator.timeout`,
    #: unless its generator has a `timeout_seconds` of its own.
    task_timeout_seconds: float = 600.0


@dataclass
class _Running:
    task: Task
    thread: threading.Thread
    #: Set when shutdown's grace period ends: the task stops and is released.
    abort: threading.Event


class Worker:
    """Runs until `stop` is set; `wake` (optional) cuts the idle wait short.

    It claims only the videos of `generators` (by name) and runs each with its own.
    """

    def __init__(
        self,
        backend: TaskBackend,
        generators: Mapping[str, VideoGenerator],
        config: WorkerConfig,
        *,
        wake: threading.Event | None = None,
    ) -> None:
        if not generators:
            raise ValueError("a worker needs at least one generator")
        self.backend = backend
        self.generators = dict(generators)
        self.config = config
        self.files = VideoFiles(config.videos_dir)
        self.wake = wake or threading.Event()
        self.stop = threading.Event()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()

    # --- the loop ------------------------------------------------------------

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def run(self) -> None:
        """Claim and run tasks until `stop` is set, then shut down gracefully."""
        cfg = self.config
        log.info(
            "worker started",
            extra={
                "worker_id": cfg.worker_id,
                "concurrency": cfg.concurrency,
                "generators": ",".join(self.generators),
            },
        )
        next_reap = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_reap:
                self._safely(self.backend.reap)
                next_reap = time.monotonic() + cfg.reap_seconds
            claimed = False
            if self.busy() < cfg.concurrency:
                task = self._safely(
                    lambda: self.backend.claim(
                        cfg.worker_id, cfg.lease_seconds, cfg.source_types, list(self.generators)
                    )
                )
                if task is not None:
                    self._start(task)
                    claimed = True
            if claimed:
                continue  # there may be more due work: look again at once
            self.wake.wait(cfg.poll_seconds if self.busy() < cfg.concurrency else 0.2)
            self.wake.clear()
        self._shutdown()

    def _safely(self, call: Callable[[], T]) -> T | None:
        """Run a backend call; a database or network outage is logged, not
        fatal, and so is any other error: the loop must outlive one bad turn
        (a thread that died here would leave the worker claiming nothing)."""
        try:
            return call()
        except AppError as exc:
            log.warning(
                "worker call failed: %s", exc.detail, extra={"worker_id": self.config.worker_id}
            )
        except Exception:
            log.exception(
                "worker call failed unexpectedly; going on",
                extra={"worker_id": self.config.worker_id},
            )
        self.stop.wait(1.0)
        return None

    def _start(self, task: Task) -> None:
        abort = threading.Event()
        thread = threading.Thread(
            target=self._run_task, args=(task, abort), name=f"task-{task.img_name}", daemon=True
        )
        with self._lock:
            self._running[task.img_name] = _Running(task, thread, abort)
        thread.start()

    def _shutdown(self) -> None:
        """Stop claiming; let running tasks finish within the grace period, then release."""
        with self._lock:
            running = list(self._running.values())
        if running:
            log.info("shutting down: waiting for %d task(s)", len(running))
        deadline = time.monotonic() + self.config.grace_seconds
        for r in running:
            r.thread.join(max(0.0, deadline - time.monotonic()))
        for r in running:
            if r.thread.is_alive():
                r.abort.set()  # the generator stops; the task is released
        for r in running:
            r.thread.join(30)
        for generator in self.generators.values():
            close = getattr(generator, "close", None)
            if close is not None:
                close()
        self.backend.close()
        log.info("worker stopped", extra={"worker_id": self.config.worker_id})

    # --- one task --------------------------------------------------------------

    def _run_task(self, task: Task, abort: threading.Event) -> None:
        started = time.monotonic()
        extra = {
            "img_name": task.img_name,
            "attempt": task.attempt,
            "generation": task.generation,
            "generator": task.generator,
        }
        log.info("task claimed", extra=extra)
        generator = self.generators.get(task.generator)
        if generator is None:  # only a claim that named no generators could bring one
            self._safely(lambda: self.backend.release(task.img_name, task.lease_token))
            with self._lock:
                self._running.pop(task.img_name, None)
            log.warning("task released: this worker does not run its generator", extra=extra)
            return
        progress = [0.0]
        cancel = threading.Event()
        lost = threading.Event()
        done = threading.Event()
        lease_ends = [task.lease_expires_at.timestamp()]  # heartbeats move it on
        own_timeout: float | None = getattr(generator, "timeout_seconds", None)
        timeout = (
            own_timeout + TIMEOUT_MARGIN_SECONDS
            if own_timeout is not None
            else self.config.task_timeout_seconds
        )
        deadline = started + timeout
        beat = threading.Thread(
            target=self._heartbeat,
            args=(task, progress, cancel, lost, done, lease_ends),
            daemon=True,
        )
        beat.start()
        filename = VideoFiles.name_for(task.img_name, task.generation, task.attempt)
        outcome = "?"
        try:
            image = resolve_image(self.config.images_dir, task.img_name)
            request = GenerationRequest(
                image_path=image,
                output_path=self.config.videos_dir / filename,
                params=task.params,
                prompt=task.prompt,
                img_name=task.img_name,
                generation=task.generation,
                attempt=task.attempt,
            )
            video = generator.generate(
                request,
                progress=lambda p: progress.__setitem__(0, p),
                should_stop=lambda: (
                    cancel.is_set()
                    or lost.is_set()
                    or abort.is_set()
                    or time.monotonic() > deadline
                ),
            )
            done.set()
            if lost.is_set():
                self.files.remove(filename)
                outcome = "lease lost"
            else:
                metadata = {
                    "width": video.width,
                    "height": video.height,
                    "frames": video.frames,
                    "fps": video.fps,
                    "codec": video.codec,
                    "bytes": video.bytes,
                    "generator": task.generator,
                    "worker_id": self.config.worker_id,
                }
                self._while_leased(
                    lease_ends,
                    abort,
                    partial(
                        self.backend.complete, task.img_name, task.lease_token, filename, metadata
                    ),
                )
                outcome = "completed"
        except GenerationCancelled:
            done.set()
            outcome = self._stopped(task, cancel, lost, abort, deadline, timeout)
        except GenerationError as exc:
            done.set()
            self.backend.fail(task.img_name, task.lease_token, exc.code, exc.message, exc.retryable)
            outcome = f"failed ({exc.code})"
        except LeaseLost:
            self.files.remove(filename)
            outcome = "lease lost"
        except AppError as exc:
            outcome = f"not recorded ({exc.detail}); the reaper will recover it"
        except Exception as exc:
            done.set()
            log.exception("generator crashed", extra=extra)
            outcome = self._record_crash(task, exc)
        finally:
            done.set()
            beat.join(5)
            with self._lock:
                self._running.pop(task.img_name, None)
            self.wake.set()
        log.info(
            "task %s",
            outcome,
            extra={**extra, "duration_s": round(time.monotonic() - started, 3)},
        )

    def _while_leased(
        self, lease_ends: list[float], abort: threading.Event, record: Callable[[], None]
    ) -> None:
        """Record a finished video. While the database (or server) is unreachable,
        try again each second until the lease ends, so a short outage does not
        throw the video away; after that the reaper owns the task.

        A `LeaseLost` after a failed try is ambiguous (the first try may have
        committed without its answer arriving), so it is reported as
        `Unavailable`: the caller then keeps the video file.
        """
        tried = False
        while True:
            try:
                record()
                return
            except LeaseLost as exc:
                if tried:
                    raise Unavailable(
                        "the result may have been recorded; its answer was lost"
                    ) from exc
                raise
            except Unavailable as exc:
                tried = True
                if abort.is_set() or time.time() + RECORD_RETRY_SECONDS >= lease_ends[0]:
                    raise
                log.warning("recording the result failed, trying again: %s", exc.detail)
                abort.wait(RECORD_RETRY_SECONDS)

    def _stopped(
        self,
        task: Task,
        cancel: threading.Event,
        lost: threading.Event,
        abort: threading.Event,
        deadline: float,
        timeout: float,
    ) -> str:
        """Record why generation stopped early."""
        try:
            if lost.is_set():
                return "lease lost"
            if cancel.is_set():
                self.backend.cancelled(task.img_name, task.lease_token)
                return "cancelled"
            if abort.is_set():
                self.backend.release(task.img_name, task.lease_token)
                return "released (shutdown)"
            if time.monotonic() > deadline:
                message = f"generation ran past {timeout:g} s"
                self.backend.fail(
                    task.img_name, task.lease_token, "generator.timeout", message, True
                )
                return "failed (generator.timeout)"
        except LeaseLost:
            return "lease lost"
        return "stopped"

    def _record_crash(self, task: Task, exc: Exception) -> str:
        try:
            message = f"{type(exc).__name__}: {exc}"[:2000]
            self.backend.fail(task.img_name, task.lease_token, "generator.crashed", message, True)
        except (LeaseLost, AppError):
            return "crashed; not recorded"
        return "failed (generator.crashed)"

    def _heartbeat(
        self,
        task: Task,
        progress: list[float],
        cancel: threading.Event,
        lost: threading.Event,
        done: threading.Event,
        lease_ends: list[float],
    ) -> None:
        lease = (task.lease_expires_at.timestamp() - time.time()) or 30.0
        # Often enough that progress is visible, and well inside the lease.
        interval = max(0.2, min(2.0, lease / 3))
        while not done.wait(interval):
            try:
                beat = self.backend.heartbeat(task.img_name, task.lease_token, progress[0])
            except LeaseLost:
                lost.set()
                return
            except AppError as exc:
                log.warning("heartbeat failed: %s", exc.detail, extra={"img_name": task.img_name})
                continue
            lease_ends[0] = beat.lease_expires_at.timestamp()
            if beat.cancel_requested:
                cancel.set()


def run_reaper(backend: TaskBackend, stop: threading.Event, interval: float = 5.0) -> None:
    """Recover expired leases until `stop` is set (for `serve --no-worker`)."""
    while not stop.wait(interval):
        try:
            backend.reap()
        except AppError as exc:
            log.warning("reaper: %s", exc.detail)
