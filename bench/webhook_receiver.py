"""A webhook receiver for the benchmark, in a process of its own: counts what
it is sent and how long after its event's commit each delivery arrived.

`python -m bench.webhook_receiver PORT`; `GET /stats` answers
`{"received": n}`, `GET /wait/N` answers it once N have arrived, `GET
/latencies` adds `"latencies_ms": [...]`, and
`POST /reset` clears them.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

lock = threading.Lock()
landed = threading.Condition(lock)
received: list[float] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a proxy

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        arrived = datetime.now(UTC)
        latency = -1.0
        if self.path.startswith("/hook"):
            occurred = json.loads(body).get("data", {}).get("occurred_at")
            if occurred:
                at = datetime.fromisoformat(occurred.replace("Z", "+00:00"))
                latency = (arrived - at).total_seconds() * 1000
        elif self.path == "/reset":
            with lock:
                received.clear()
        if self.path.startswith("/hook"):
            with lock:
                received.append(latency)
                landed.notify_all()
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/wait/"):  # one long poll: the bench's side spends nothing waiting
            count = int(self.path.rsplit("/", 1)[1])
            with landed:
                landed.wait_for(lambda: len(received) >= count, timeout=600)
        with lock:
            # The count alone while the bench waits: a growing list on every poll
            # would cost both processes CPU that the baseline does not spend.
            stats: dict[str, Any] = {"received": len(received)}
            if self.path == "/latencies":
                stats["latencies_ms"] = list(received)
        out = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
