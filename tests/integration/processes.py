"""vidledger as real processes, for tests that kill, restart and multiply them.

`serve` and `worker` run as `python -m app.cli …` subprocesses with their
output in a log file (a pipe nobody reads would fill up and block a busy
server). Everything started here is stopped by its own PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from app.events.types import RecordedEvent
from app.lifecycle import EventType

#: A 2-frame video: the local generator makes it in milliseconds.
TINY = {"duration_seconds": 0.5, "fps": 4}


def make_png(folder: Path, name: str, size: tuple[int, int] = (64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", size, (200, 80, 40)).save(path, format="PNG")
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time{': ' + what if what else ''}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_env(database_url: str, images_dir: Path, videos_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a vidledger subprocess: this one's, plus its settings."""
    return {
        **os.environ,
        "VIDLEDGER_DATABASE_URL": database_url,
        "VIDLEDGER_IMAGES_DIR": str(images_dir),
        "VIDLEDGER_VIDEOS_DIR": str(videos_dir),
        **{f"VIDLEDGER_{k.upper()}": v for k, v in extra.items()},
    }


class CliProcess:
    """One `vidledger …` subprocess; its output goes to `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        """Start it (again, after it was stopped or killed)."""
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args],
                env=self.env,
                cwd=self.log_path.parent,  # no stray .env file is read
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class Server(CliProcess):
    """`vidledger serve` on a port of its own."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        worker: bool = True,
        workers: int = 1,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port), "--worker" if worker else "--no-worker"]
        # One API process unless asked: a test that kills `serve` kills all of it.
        args += ["--workers", str(workers)]
        super().__init__(args, env, log_path)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def answers() -> bool:
            assert self.alive(), f"serve exited:\n{self.output()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout, f"serve on port {self.port} answering")


class Processes:
    """What a test started; `stop_all` (in its teardown) stops each by its PID."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.started: list[CliProcess] = []

    def server(
        self, name: str, *, worker: bool = True, wait: bool = True, workers: int = 1
    ) -> Server:
        """Start `serve`; with `wait`, return once it answers (else call `wait_healthy`)."""
        server = Server(self.env, self.tmp / "logs" / f"{name}.log", worker=worker, workers=workers)
        self.started.append(server)
        if wait:
            server.wait_healthy()
        return server

    def worker(self, worker_id: str, *extra_args: str) -> CliProcess:
        args = ["worker", "--worker-id", worker_id, *extra_args]
        process = CliProcess(args, self.env, self.tmp / "logs" / f"{worker_id}.log")
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop(timeout=20)


def assert_processed_once(img_name: str, events: Iterable[RecordedEvent]) -> None:
    """Exactly one `VideoCompleted`, and no task held by two workers at once:
    every start is followed by its own outcome (the worker's, or the reaper's
    after a lease expiry) before the next start."""
    events = list(events)
    kinds = Counter(e.event_type for e in events)
    assert kinds[EventType.COMPLETED] == 1, (img_name, [e.event_type for e in events])
    holder: str | None = None
    for e in events:
        if e.event_type is EventType.PROCESSING_STARTED:
            assert holder is None, f"{img_name} claimed twice at once"
            holder = e.actor
        elif e.event_type in (EventType.COMPLETED, EventType.RETRY_SCHEDULED, EventType.FAILED):
            assert e.actor in (holder, "system:reaper"), (img_name, e.actor, holder)
            holder = None


def problem_code(response: httpx.Response) -> Any:
    """The problem `code` of an error answer, or None if it is not problem JSON."""
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    return response.json().get("code")
