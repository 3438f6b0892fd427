"""Browser fixtures: a real server on a free port, and Debian's headless Chromium.

The server is the embedded default on SQLite (optionally with its in-process
worker), with one API key per role made before it starts. Chromium is
`/usr/bin/chromium` driven by Playwright; no browser is ever downloaded.
With `CI` set a missing Chromium fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from app.api import create_app
from app.config import Settings
from app.db.engine import open_database
from app.keys import Role, create_key

CHROMIUM = Path(os.environ.get("VIDLEDGER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("VIDLEDGER_SCREENSHOTS", ROOT / "var" / "screenshots"))
EXPECTED_REFUSAL = re.compile(r"status of 40[139] ")
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

#: Small, quick videos: the browser tests wait for real ones.
QUICK = {"fps": 8, "duration_seconds": 1.5, "max_size": 320}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_image(folder: Path, name: str) -> None:
    """A 320x200 diagonal gradient, so the video visibly pans."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (320, 200))
    img.putdata([(40 + x // 2, 90 + y // 2, 200 - x // 3) for y in range(200) for x in range(320)])
    img.save(folder / name, format="PNG")


@dataclass
class Server:
    url: str
    keys: dict[Role, str]
    settings: Settings

    def api(self, role: Role = Role.ADMIN) -> httpx.Client:
        """A client with the role's key (none in open mode)."""
        secret = self.keys.get(role)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def request_video(
        self, name: str, source_type: str = "scene", *, image: bool = True
    ) -> dict[str, Any]:
        """Request a quick video; `image=False` leaves the image missing, so it fails."""
        if image:
            make_image(self.settings.images_dir, name)
        with self.api(Role.WRITE) as c:
            r = c.post(
                "/v1/videos", json={"img_name": name, "source_type": source_type, "params": QUICK}
            )
        assert r.status_code == 202, r.text
        body: dict[str, Any] = r.json()
        return body

    def status(self, name: str) -> dict[str, Any]:
        with self.api(Role.READ) as c:
            body: dict[str, Any] = c.get(f"/v1/videos/{name}").json()
            return body

    def wait_status(self, name: str, wanted: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (body := self.status(name))["video_status"] != wanted:
            assert time.monotonic() < deadline, f"{name} is {body['video_status']}, not {wanted}"
            time.sleep(0.05)
        return body


@pytest.fixture
def start_server(sqlite_template: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (`worker=True` runs the in-process worker); all stop at teardown."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*, worker: bool, keys: bool = True) -> Server:
        folder = tmp_path / f"server{len(running)}"
        folder.mkdir()
        shutil.copy(sqlite_template, folder / "vidledger.db")
        settings = Settings(
            database_url=f"sqlite:///{folder / 'vidledger.db'}",
            images_dir=folder / "images",
            videos_dir=folder / "videos",
            backoff_base_seconds=0.01,
            backoff_cap_seconds=0.05,
            webhook_allowed_networks="127.0.0.0/8",  # the tests' receivers are on loopback
            webhook_retry_schedule="0",
        )
        db = open_database(settings.database_url, pool_size=2)
        now = datetime.now(UTC)
        secrets = (
            {role: create_key(db, f"{role.value}-key", role, now) for role in Role} if keys else {}
        )
        db.dispose()
        port = _free_port()
        app = create_app(settings, run_worker=worker, run_dispatcher=True)
        app.state.feed_ping_seconds = 1.0
        srv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        )
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        running.append((srv, thread))
        deadline = time.monotonic() + 20
        while not srv.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return Server(f"http://127.0.0.1:{port}", secrets, settings)

    yield start
    for srv, _ in running:
        srv.should_exit = True
    for _, thread in running:
        thread.join(15)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (make test does it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - dev extras always bring it
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Open a page of a server, signed in with `key` (None: no key), at a viewport size."""
    contexts: list[Any] = []

    def open_(url: str, key: str | None, viewport: dict[str, int] = DESKTOP) -> Any:
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(15_000)
        if key is not None:
            context.add_init_script(
                f"sessionStorage.setItem('vidledger.apiKey', {json.dumps(key)});"
            )
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # Console errors too: a Content-Security-Policy violation or a failed load
        # shows there. The API's refusals (401, 403, 409) are expected: the page
        # shows them to the operator.
        def on_console(msg: Any) -> None:
            if msg.type == "error" and not EXPECTED_REFUSAL.search(msg.text):
                errors.append(msg.text)

        page.on("console", on_console)
        page.js_errors = errors
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
