"""A webhook receiver for tests: a real HTTP server on loopback that records
what it is sent and answers what it is told to."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server that records what it is sent and answers `answers`
    (a status, with headers) in turn, then `default`."""

    received: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: int = 204
    #: Seconds to wait before answering (a slow receiver).
    delay: float = 0.0
    #: Requests that have arrived, answered or not.
    arrived: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.arrived += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    status, extra = (
                        receiver.answers.pop(0) if receiver.answers else (receiver.default, {})
                    )
                    if 200 <= status < 300:
                        receiver.received.append(Received(dict(self.headers), body, time.time()))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.json for r in self.received]
