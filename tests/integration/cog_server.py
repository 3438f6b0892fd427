"""A real Cog model server for tests: `python -m cog.server.http` (cog + coglet
from PyPI, no Docker) serving a predictor folder, as the README tells a user.

It runs with this venv's `python` first on PATH: coglet spawns its worker
with whatever `python` it finds there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.integration.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cog-kenburns"
NOT_VIDEO = ROOT / "tests" / "fixtures" / "cog_not_video"


class CogServer:
    def __init__(
        self, folder: Path, log_path: Path, *, slots: int = 1, upload_url: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "COG_MAX_CONCURRENCY": str(slots),
            "PORT": str(self.port),
        }
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cog.server.http",
                    "--host",
                    "127.0.0.1",
                    *(["--upload-url", upload_url] if upload_url else []),
                ],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the cog server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health-check", timeout=2).json().get("status") == "READY":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the cog server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log(self) -> list[dict[str, Any]]:
        """The server's JSON log lines: each prediction's start, output and end."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
        return lines

    def messages(self, prediction_id: str) -> list[str]:
        return [
            line["fields"]["message"]
            for line in self.log()
            if line.get("fields", {}).get("prediction_id") == prediction_id
        ]

    def starts(self) -> Counter[str]:
        """How often each prediction id was started."""
        return Counter(
            line["fields"]["prediction_id"]
            for line in self.log()
            if line.get("fields", {}).get("message") == "Starting prediction"
        )


class UploadStore:
    """Where a Cog server started with `--upload-url` PUTs its outputs, and
    from where they are fetched: a real HTTP server on loopback."""

    def __init__(self) -> None:
        files: dict[str, bytes] = {}
        self.files = files

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                files[self.path] = self.rfile.read(size)
                self.send_response(201)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/upload/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlakyProxy:
    """A TCP proxy in front of a server that can lose the answer to the next
    `PUT`: the request reaches the server, the client's connection is cut
    before the answer comes back. What a worker sees when its network drops."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop_next_put_answer = False
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut = threading.Event()
            threading.Thread(
                target=self._pump, args=(client, upstream, cut, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, cut, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event, up: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if up and self.drop_next_put_answer and chunk.startswith(b"PUT /predictions/"):
                    self.drop_next_put_answer = False
                    cut.set()  # the request goes through; its answer will not
                elif not up and cut.is_set():
                    self.dropped += 1
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def stop(self) -> None:
        self.listener.close()
