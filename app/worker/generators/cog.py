"""The `cog` kind: an image-to-video model behind a Cog HTTP server.

Every model on Replicate is a Cog container; `cog` and `coglet` from PyPI
run one without Docker. One generation is one prediction:

- `PUT /predictions/{id}` with `Prefer: respond-async` starts it. The id is
  derived from the task (image, generation, attempt), and the server
  answers the running prediction's state to a second PUT of that id
  instead of starting another run: a worker that lost its connection
  reattaches.
- The server POSTs each update (`logs`, then the finished prediction) to
  a webhook: a small HTTP receiver this worker runs. Its `logs` (tqdm
  lines such as `45%|` or `9/48`) become the task's progress.
- `POST /predictions/{id}/cancel` stops it, on a cancel request, a lost
  lease, the timeout or shutdown.
- `GET /health-check` tells a server that went away, or restarted and so
  forgot the prediction.

The output (a `data:` URI, or a URL when the server uploads) is checked
to be a video that decodes, then published atomically.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import mimetypes
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.worker.generators import output, template
from app.worker.generators.base import (
    GeneratedVideo,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    redact,
)
from app.worker.generators.catalog import GeneratorSettingError, settings_of

log = logging.getLogger(__name__)

TERMINAL = {"succeeded", "failed", "canceled"}
PLACEHOLDERS = {"image", "prompt", "params", "img_name"}
#: The most a model's output may weigh (a URL output is streamed to disk).
OUTPUT_MAX_BYTES = 4 * 1024**3
#: How long a cancelled prediction gets to report that it stopped.
CANCEL_WAIT_SECONDS = 10.0
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%\|")
#: What coglet puts before a predictor's own error ("Prediction failed: Async prediction failed: ").
_COGLET_PREFIX = re.compile(r"^(?:(?:Async )?[Pp]rediction failed: )+")
_STEPS = re.compile(r"(?<![\w/])(\d+)/(\d+)(?![\w/])")


class CogSettings(BaseModel):
    """A `[generators.<name>]` table of kind `cog` (README, "Generators")."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="the model server, e.g. http://gpu-1:5000")
    input: dict[str, Any] = Field(
        default_factory=lambda: {"image": "{image}", "prompt": "{prompt}"},
        description="the prediction's input; {image} is the image as a data: URI",
    )
    timeout_seconds: float = Field(900.0, gt=0, le=86_400)
    #: Whether a prediction that failed is tried again (the model may be flaky).
    retry_failed: bool = False
    #: Where this worker listens for the server's updates.
    webhook_host: str = "127.0.0.1"
    #: 0 picks a free port. Fix it (and `webhook_url`) for a server on another host,
    #: and so that a restarted worker hears a prediction it started before.
    webhook_port: int = Field(0, ge=0, le=65535)
    #: How the model server reaches the receiver, when not http://webhook_host:port.
    webhook_url: str | None = None
    #: Bounds each HTTP call to the server (the prediction itself has `timeout_seconds`).
    request_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    #: How long a lost connection is tried again, with the same prediction id (so a
    #: prediction that did start is reattached), before the task fails unreachable.
    reconnect_seconds: float = Field(30.0, ge=0, le=3600)
    #: How often the server's health is checked while a prediction runs.
    health_interval_seconds: float = Field(5.0, gt=0, le=600)

    @field_validator("url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None


def build(name: str, settings: Mapping[str, Any]) -> CogGenerator:
    """The `cog` kind (entry point `vidledger.generators`)."""
    parsed = settings_of(CogSettings, settings)
    template.check(parsed.input, PLACEHOLDERS, "input")
    if not parsed.input:
        raise GeneratorSettingError("input", "must name at least one input")
    return CogGenerator(name, parsed)


def prediction_id(request: GenerationRequest, attempt: int | None = None) -> str:
    """The same id for every send of one attempt of one task, and only for it."""
    key = f"{request.img_name}\0{request.generation}\0{attempt or request.attempt}"
    return "vl-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def progress_of(logs: str) -> float | None:
    """The fraction done that the last progress line of `logs` reports:
    a tqdm bar (`45%|`) or a step count (`9/48`)."""
    for line in reversed(re.split(r"[\r\n]+", logs)):
        percent = _PERCENT.findall(line)
        if percent:
            return min(1.0, float(percent[-1]) / 100)
        steps = _STEPS.findall(line)
        if steps:
            done, total = (int(n) for n in steps[-1])
            if total > 0 and done <= total:
                return done / total
    return None


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


# --- the webhook receiver -----------------------------------------------------------


@dataclass
class _Receiver:
    """One HTTP server per (host, port) in this process, shared by the `cog`
    generators that listen there. Each prediction's updates go to its own
    inbox; its URL carries an HMAC of the id, so no one else can post them."""

    host: str
    port: int
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    inboxes: dict[str, queue.SimpleQueue[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(min(length, 64 * 1024**2))
                if len(parts) == 3 and parts[0] == "predictions":
                    receiver.deliver(parts[1], parts[2], body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: each update would be a line."""

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="cog-webhooks", daemon=True).start()
        log.info("cog webhook receiver listening", extra={"port": self.port})

    def token(self, pid: str) -> str:
        return hmac.new(self.secret, pid.encode(), hashlib.sha256).hexdigest()[:32]

    def path(self, pid: str) -> str:
        return f"/predictions/{pid}/{self.token(pid)}"

    def expect(self, pid: str) -> queue.SimpleQueue[dict[str, Any]]:
        with self.lock:
            inbox = self.inboxes[pid] = queue.SimpleQueue()
        return inbox

    def forget(self, pid: str) -> None:
        with self.lock:
            self.inboxes.pop(pid, None)

    def deliver(self, pid: str, token: str, body: bytes) -> None:
        if not hmac.compare_digest(token.encode(), self.token(pid).encode()):
            return
        with self.lock:
            inbox = self.inboxes.get(pid)
        if inbox is None:
            return
        try:
            update = json.loads(body)
        except ValueError:
            return
        if isinstance(update, dict):
            inbox.put(update)


_receivers: dict[tuple[str, int], _Receiver] = {}
_receivers_lock = threading.Lock()


def _receiver(host: str, port: int) -> _Receiver:
    with _receivers_lock:
        found = _receivers.get((host, port))
        if found is None:
            found = _Receiver(host, port)
            found.start()
            _receivers[(host, port)] = found
            if port == 0:
                _receivers[(host, found.port)] = found
        return found


# --- the generator ----------------------------------------------------------------


class CogGenerator:
    """Runs each task as one prediction of the model server at `settings.url`."""

    def __init__(self, name: str, settings: CogSettings) -> None:
        self.name = name
        self.settings = settings
        self.timeout_seconds = settings.timeout_seconds
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.settings.url, timeout=self.settings.request_timeout_seconds
                )
            return self._http

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        """Run one prediction and publish its video; see the module docstring.

        Raises `GenerationError` (`provider.unreachable`, `provider.timeout`:
        retryable; `provider.rejected`, `provider.bad_output`: not;
        `provider.failed`: as `retry_failed` says) and `GenerationCancelled`.
        """
        deadline = time.monotonic() + self.settings.timeout_seconds
        pid = prediction_id(request)
        receiver = _receiver(self.settings.webhook_host, self.settings.webhook_port)
        inbox = receiver.expect(pid)
        try:
            if request.attempt > 1:
                self._cancel(prediction_id(request, request.attempt - 1))  # an orphan, if any
            body = {
                "id": pid,
                "input": self._input(request),
                "webhook": self._webhook_base(receiver) + receiver.path(pid),
                "webhook_events_filter": ["start", "logs", "completed"],
            }
            started_at = self._setup_started_at()
            first = self._start(pid, body, deadline, should_stop)
            final = self._follow(pid, first, inbox, started_at, deadline, should_stop, progress)
        finally:
            receiver.forget(pid)
        video = self._publish(final, request.output_path)
        progress(1.0)
        return video

    # --- steps ------------------------------------------------------------------------

    def _input(self, request: GenerationRequest) -> Any:
        values = {
            "image": data_uri(request.image_path),
            "prompt": request.prompt,
            "params": request.params,
            "img_name": request.img_name,
        }
        return template.fill(self.settings.input, values)

    def _webhook_base(self, receiver: _Receiver) -> str:
        if self.settings.webhook_url is not None:
            return self.settings.webhook_url
        return f"http://{receiver.host}:{receiver.port}"

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            why = f"the model server did not answer in time ({type(exc).__name__})"
            raise _unreachable(why) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot reach the model server ({type(exc).__name__})") from exc

    def _setup_started_at(self) -> str | None:
        """When the server's setup started: a different value later means it restarted."""
        answer = self._call("GET", "/health-check")
        if answer.status_code != 200:
            raise _unreachable(f"the model server's health check answered {answer.status_code}")
        health = _json(answer)
        status = health.get("status")
        if status not in ("READY", "BUSY"):
            raise _unreachable(f"the model server is not ready ({status})")
        setup = health.get("setup")
        return str(setup.get("started_at")) if isinstance(setup, dict) else None

    def _start(
        self, pid: str, body: dict[str, Any], deadline: float, should_stop: Callable[[], bool]
    ) -> dict[str, Any]:
        """PUT the prediction; while every slot is busy, or the connection is
        lost (`reconnect_seconds`), try again each second with the same id."""
        headers = {"Prefer": "respond-async"}
        lost = _Outage(self.settings.reconnect_seconds)
        while True:
            try:
                answer = self._call("PUT", f"/predictions/{pid}", json=body, headers=headers)
            except GenerationError:
                if should_stop() or time.monotonic() >= deadline or lost.over():
                    raise
                time.sleep(1.0)
                continue
            if answer.status_code == 409:  # "at capacity": another prediction holds the slots
                if should_stop():
                    raise GenerationCancelled("stopped while the model server was busy")
                if time.monotonic() >= deadline:
                    raise _timeout("every slot of the model server stayed busy")
                time.sleep(1.0)
                continue
            if 400 <= answer.status_code < 500:
                raise GenerationError(
                    "provider.rejected",
                    f"the model refused the input: {_problem(answer)}",
                    retryable=False,
                )
            if answer.status_code >= 300:
                raise _unreachable(f"the model server answered {answer.status_code}")
            state = _json(answer)
            if state.get("status") not in (None, "starting"):
                log.info("reattached to a running prediction", extra={"prediction_id": pid})
            return state

    def _follow(
        self,
        pid: str,
        state: dict[str, Any],
        inbox: queue.SimpleQueue[dict[str, Any]],
        started_at: str | None,
        deadline: float,
        should_stop: Callable[[], bool],
        progress: Callable[[float], None],
    ) -> dict[str, Any]:
        """Updates until the prediction ends; returns the finished prediction."""
        done = 0.0
        next_health = time.monotonic() + self.settings.health_interval_seconds
        lost = _Outage(self.settings.reconnect_seconds)
        while True:
            fraction = progress_of(str(state.get("logs") or ""))
            if fraction is not None and fraction > done:
                done = fraction
                progress(min(done, 0.99))
            if state.get("status") in TERMINAL:
                return self._ended(state)
            if should_stop():
                self._cancel_and_wait(pid, inbox)
                raise GenerationCancelled("the prediction was cancelled")
            if time.monotonic() >= deadline:
                self._cancel_and_wait(pid, inbox)
                raise _timeout(f"the prediction ran past {self.settings.timeout_seconds:g} s")
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.settings.health_interval_seconds
                try:
                    restarted = self._setup_started_at() != started_at
                except GenerationError:
                    if lost.over():  # its updates may still arrive: wait out the window
                        raise
                else:
                    lost.ended()
                    if restarted:
                        raise _unreachable("the model server restarted and lost the prediction")
            with contextlib.suppress(queue.Empty):
                state = inbox.get(timeout=0.2)

    def _ended(self, state: dict[str, Any]) -> dict[str, Any]:
        status = state.get("status")
        if status == "succeeded":
            return state
        if status == "canceled":  # not by us: we raise before we would read this
            raise GenerationError(
                "provider.failed", "the model server cancelled the prediction", retryable=True
            )
        message = redact(str(state.get("error") or "no error message"))
        message = _COGLET_PREFIX.sub("", message)
        raise GenerationError(
            "provider.failed",
            f"the model failed: {message}",
            retryable=self.settings.retry_failed,
        )

    def _cancel(self, pid: str) -> None:
        """Ask the server to stop `pid`; one it does not know is no error."""
        with contextlib.suppress(GenerationError):
            self._call("POST", f"/predictions/{pid}/cancel")

    def _cancel_and_wait(self, pid: str, inbox: queue.SimpleQueue[dict[str, Any]]) -> None:
        self._cancel(pid)
        until = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < until:
            try:
                if inbox.get(timeout=0.2).get("status") in TERMINAL:
                    return
            except queue.Empty:
                continue
        log.warning("the prediction did not report that it stopped", extra={"prediction_id": pid})

    def _publish(self, state: dict[str, Any], path: Path) -> GeneratedVideo:
        found = state.get("output")
        if isinstance(found, list):
            found = next((o for o in found if isinstance(o, str)), None)
        if not isinstance(found, str) or not found:
            raise _bad_output("the prediction returned no file")
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = output.temp_path(path)
        try:
            if found.startswith("data:"):
                temp.write_bytes(_decode_data_uri(found))
            elif found.startswith(("http://", "https://")):
                self._download(found, temp)
            else:
                raise _bad_output("the output is neither a data: URI nor a URL")
            video = output.probe(temp, "provider.bad_output")
            output.publish(temp, path)
            return video
        finally:
            output.discard(temp)

    def _download(self, url: str, temp: Path) -> None:
        try:
            with self.http.stream("GET", url) as answer:
                if answer.status_code != 200:
                    raise _unreachable(f"fetching the output answered {answer.status_code}")
                written = 0
                with temp.open("wb") as sink:
                    for chunk in answer.iter_bytes(1 << 20):
                        written += len(chunk)
                        if written > OUTPUT_MAX_BYTES:
                            raise _bad_output("the output is larger than 4 GiB")
                        sink.write(chunk)
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot fetch the output ({type(exc).__name__})") from exc


# --- helpers ----------------------------------------------------------------------


class _Outage:
    """A lost connection, tolerated for `seconds` from its first failure."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None

    def over(self) -> bool:
        """Note one more failure; True once they have lasted past the window."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        return now - self.since >= self.seconds

    def ended(self) -> None:
        self.since = None


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        value = answer.json()
    except ValueError:
        raise _unreachable("the model server answered something other than JSON") from None
    return value if isinstance(value, dict) else {}


def _problem(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return redact(answer.text or str(answer.status_code), limit=300)
    detail = body.get("detail") or body.get("error") or body if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI-style: [{"loc": [..., "fps"], "msg": "..."}]
        parts = [
            f"{e['loc'][-1]}: {e['msg']}" if e.get("loc") else str(e.get("msg"))
            for e in detail
            if isinstance(e, dict) and "msg" in e
        ]
        if parts:
            return redact("; ".join(parts), limit=300)
    return redact(detail if isinstance(detail, str) else json.dumps(detail), limit=300)


def _decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise _bad_output("the output is a malformed data: URI")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise _bad_output("the output is a malformed data: URI") from None


def _unreachable(message: str) -> GenerationError:
    return GenerationError("provider.unreachable", message, retryable=True)


def _timeout(message: str) -> GenerationError:
    return GenerationError("provider.timeout", message, retryable=True)


def _bad_output(message: str) -> GenerationError:
    return GenerationError("provider.bad_output", message, retryable=False)
