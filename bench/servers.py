"""uvicorn servers for the HTTP benchmarks, each in a subprocess of its own,
all with the same settings, started one at a time and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent

#: Identical for the project and the baseline: one process, no access log.
UVICORN_ARGS = [
    "--workers",
    "1",
    "--loop",
    "auto",
    "--http",
    "auto",
    "--no-access-log",
    "--log-level",
    "warning",
]


def project() -> FastAPI:
    """uvicorn's factory for the project: `create_app` as `vidledger serve
    --no-worker` builds it, minus the reaper (nothing here holds a lease),
    its startup heap frozen as `serve` does."""
    from app.api import create_app, freeze_startup_heap
    from app.config import Settings

    settings = Settings(
        database_url=os.environ["VIDLEDGER_BENCH_URL"],
        videos_dir=Path(tempfile.gettempdir()) / "vidledger-bench-videos",
        log_level="warning",
    )
    app = create_app(settings)
    freeze_startup_heap()
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(factory: str, env: dict[str, str], probe: str) -> Iterator[str]:
    """Run `factory` (module:function) under uvicorn; yield its base URL once
    `probe` answers at all, and stop it (by its PID) afterwards."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *UVICORN_ARGS,
    ]
    with running(cmd, {**os.environ, **env}, port, probe, factory) as base:
        yield base


@contextmanager
def running(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    probe: str,
    what: str,
    *,
    start_seconds: float = 30.0,
    stop_seconds: float = 10.0,
) -> Iterator[str]:
    """Run `cmd` (a server on `port`); yield its base URL once `probe`
    answers at all, and stop it by its PID (SIGTERM, then SIGKILL) afterwards."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before serving")
            try:
                httpx.get(base + probe, timeout=1)
                break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer {probe} within {start_seconds:g} s")
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def cog_model(folder: Path, slots: int) -> Iterator[str]:
    """A Cog model server (`python -m cog.server.http`, cog + coglet) for the
    predictor in `folder`, with `slots` predictions at once; yields its URL."""
    port = _free_port()
    env = {
        **os.environ,
        # coglet starts its worker with the `python` on PATH: this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
        "COG_MAX_CONCURRENCY": str(slots),
        "PORT": str(port),
    }
    cmd = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the cog server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/health-check", timeout=1).json().get("status") == "READY":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cog server was not ready within 60 s")
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
