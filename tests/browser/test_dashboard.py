"""/ui in headless Chromium against a real server: what an operator sees and does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.keys import Role
from tests.browser.conftest import PHONE, Server, screenshot
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Any]
StartServer = Callable[..., Server]


def wait_js(page: Any, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression until true. (wait_for_function evals inside the page,
    which the dashboard's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true in time: {expression}"
        time.sleep(0.05)


def live_row(page: Any, name: str, to: str) -> Any:
    return page.locator(f'#live tbody tr[data-img="{name}"][data-to="{to}"]')


def test_overview_shows_a_requested_video_arrive_live_and_complete(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=True)
    page = open_page(f"{server.url}/ui", server.keys[Role.ADMIN])
    page.locator("#live-state", has_text="live").wait_for()
    assert page.locator("#who-label").inner_text() == "admin-key · admin"

    server.request_video("sunset.png", "scene")
    live_row(page, "sunset.png", "pending").wait_for()
    live_row(page, "sunset.png", "processing").wait_for()
    live_row(page, "sunset.png", "completed").wait_for()
    # The newest transition is on top, and the counts follow without a reload.
    assert page.locator("#live tbody tr").first.get_attribute("data-to") == "completed"
    page.locator('[data-count="completed"]', has_text="1").wait_for()

    server.request_video("portrait.png", "role_card")
    live_row(page, "portrait.png", "completed").wait_for()
    page.locator('#sources tbody th:has-text("role_card")').wait_for()
    server.request_video("lost.png", "upload", image=False)
    live_row(page, "lost.png", "failed").wait_for()
    page.locator('[data-count="failed"]', has_text="1").wait_for()
    # The queue and the failures, by generator: one completed, one failed.
    kenburns = page.locator('#generators tbody tr[data-generator="kenburns"]')
    kenburns.locator("td", has_text="image.not_found 1").wait_for()
    cells = [kenburns.locator("td").nth(i).inner_text() for i in (4, 5)]
    assert cells == ["2", "1"]  # completed, failed
    page.locator("#ready", has_text="healthy").wait_for()
    assert page.js_errors == []
    screenshot(page, "overview-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "overview-phone")


def test_image_page_plays_the_video_and_shows_every_transition(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=True)
    server.request_video("cat.png", "role_card")
    final = server.wait_status("cat.png", "completed")
    with server.api(Role.READ) as c:
        history = c.get("/v1/videos/cat.png/history").json()["items"]

    page = open_page(f"{server.url}/ui/videos/cat.png", server.keys[Role.READ])
    page.locator("#status-badge", has_text="completed").wait_for()
    wait_js(page, "document.getElementById('player').readyState >= 2")
    assert page.evaluate("document.getElementById('player').duration") > 1.0
    page.evaluate("document.getElementById('player').play()")
    wait_js(page, "document.getElementById('player').currentTime > 0")

    rows = page.locator("#timeline tbody tr")
    assert rows.count() == len(history) == final["version"] == 3
    for row, event in zip(rows.all(), history, strict=True):
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == str(event["version"])
        assert cells[2] == event["event_type"]
        assert cells[3].split() == [event["from_status"], "→", event["to_status"]]
        assert cells[4] == event["actor"]
        assert cells[8].strip() not in ("", "\u2013")  # time spent in that state
    assert history[0]["actor"] == "write-key"

    # Time travel: at version 1 the video was only requested.
    page.locator("#asof-facts .badge", has_text="completed").wait_for()
    page.locator("#version").fill("1")
    page.locator("#asof-facts .badge", has_text="pending").wait_for()
    assert page.locator("#version-out").inner_text() == "1 of 3"
    assert page.locator('#timeline tr.current[data-version="1"]').count() == 1
    page.locator("#version").fill("3")
    page.locator("#asof-facts .badge", has_text="completed").wait_for()

    assert page.js_errors == []
    screenshot(page, "image-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "image-phone")


def test_cancel_a_pending_video_from_the_ui_and_see_a_refusal(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)  # nothing claims it: it stays pending
    server.request_video("queued.png")
    page = open_page(f"{server.url}/ui/videos/queued.png", server.keys[Role.WRITE])
    page.locator("#status-badge", has_text="pending").wait_for()

    # Retry is refused by the API while pending: the page shows its detail.
    page.get_by_role("button", name="Retry").click()
    page.locator("#confirm").get_by_role("button", name="Confirm").click()
    result = page.locator("#action-result")
    result.filter(has_text="Refused").wait_for()
    assert "pending" in result.inner_text()

    # Backing out of the confirmation changes nothing.
    page.get_by_role("button", name="Cancel").click()
    page.locator("#confirm").get_by_role("button", name="Back").click()
    assert server.status("queued.png")["video_status"] == "pending"

    page.get_by_role("button", name="Cancel").click()
    page.get_by_label("Reason (optional)").fill("not needed any more")
    page.locator("#confirm").get_by_role("button", name="Confirm").click()
    page.locator("#status-badge", has_text="cancelled").wait_for()
    page.locator('#timeline tbody tr[data-event="VideoCancelled"]').wait_for()

    with server.api() as c:
        last = c.get("/v1/videos/queued.png/history").json()["items"][-1]
    assert (last["event_type"], last["actor"], last["reason"]) == (
        "VideoCancelled",
        "write-key",
        "not needed any more",
    )
    assert page.js_errors == []


def test_a_read_only_key_sees_no_action_buttons(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)
    server.request_video("dog.png")
    page = open_page(f"{server.url}/ui/videos/dog.png", server.keys[Role.READ])
    page.locator("#status-badge", has_text="pending").wait_for()
    assert page.locator("#who-label").inner_text() == "read-key · read"
    for name in ("Cancel", "Retry", "Regenerate", "Delete"):
        assert page.get_by_role("button", name=name).count() == 0
    assert not page.locator("#actions").is_visible()

    # The admin-only page shows the API's refusal, not data.
    page.goto(f"{server.url}/ui/projections")
    page.locator("#banner", has_text="may not admin").wait_for()
    assert page.locator("#projections tbody tr").count() == 0
    assert page.js_errors == []


def test_sign_in_keeps_the_key_in_the_tab_and_bad_keys_are_refused(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)
    page = open_page(f"{server.url}/ui", None)
    page.locator("#banner", has_text="an API key is required").wait_for()

    page.goto(f"{server.url}/ui/signin")
    page.get_by_label("API key").fill("vl_nope_nope")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#signin-result", has_text="unknown or revoked API key").wait_for()
    page.set_viewport_size(PHONE)
    screenshot(page, "signin-phone")
    assert page.evaluate("sessionStorage.getItem('vidledger.apiKey')") is None

    page.get_by_label("API key").fill(server.keys[Role.WRITE])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/ui")
    page.locator("#who-label", has_text="write-key · write").wait_for()
    assert page.evaluate("localStorage.length") == 0

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server.url}/ui/signin")
    assert page.evaluate("sessionStorage.getItem('vidledger.apiKey')") is None
    assert page.js_errors == []


def test_videos_table_filters_by_status_source_and_prefix_and_pages(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)
    for i in range(30):
        server.request_video(f"shot-{i:02d}.png", "scene")
    server.request_video("other.png", "upload")
    with server.api(Role.WRITE) as c:
        assert c.post("/v1/videos/shot-00.png/cancel", json={}).status_code == 200

    page = open_page(f"{server.url}/ui/videos", server.keys[Role.READ])
    page.get_by_label("Name starts with").fill("shot-")
    page.get_by_label("Source type").fill("scene")
    page.get_by_role("button", name="Filter").click()
    loaded = page.locator('#videos[aria-busy="false"]')
    loaded.wait_for()
    assert page.locator("#page-no").inner_text() == "Page 1"
    assert page.locator("#videos tbody tr").count() == 25
    first = set(page.locator("#videos tbody th").all_inner_texts())
    screenshot(page, "videos-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "videos-phone")
    page.get_by_role("button", name="Next").click()
    loaded.wait_for()
    assert page.locator("#page-no").inner_text() == "Page 2"
    second = set(page.locator("#videos tbody th").all_inner_texts())
    assert len(second) == 5 and not first & second
    assert first | second == {f"shot-{i:02d}.png" for i in range(30)}
    assert page.get_by_role("button", name="Next").is_disabled()
    page.get_by_role("button", name="Previous").click()
    loaded.wait_for()
    assert set(page.locator("#videos tbody th").all_inner_texts()) == first

    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Filter").click()
    loaded.wait_for()
    assert page.locator("#videos tbody tr").count() == 1
    assert page.locator("#videos tbody th").inner_text() == "shot-00.png"
    assert "status=cancelled" in page.url
    assert page.js_errors == []


def test_projections_page_verifies_for_an_admin(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)
    server.request_video("a.png")
    page = open_page(f"{server.url}/ui/projections", server.keys[Role.ADMIN])
    row = page.locator("#projections tbody tr", has_text="image_video_status")
    row.wait_for()
    assert "ok" in row.locator("td").first.inner_text()
    row.get_by_role("button", name="Verify image_video_status").click()
    page.locator("#verify-summary", has_text="no drift").wait_for()
    assert "1 images checked" in page.locator("#verify-summary").inner_text()

    # Drift (the table edited behind the log's back) is listed column by column.
    engine = create_engine(server.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE image_video_status SET attempts = 7 WHERE img_name = 'a.png'"))
    engine.dispose()
    row.get_by_role("button", name="Verify image_video_status").click()
    page.locator("#verify-summary", has_text="1 image(s) differ").wait_for()
    cells = page.locator("#differences tbody tr").first.locator("th, td").all_inner_texts()
    assert cells == ["a.png", "attempts", "0", "7"]
    assert page.js_errors == []
    screenshot(page, "projections-desktop")


def test_open_mode_needs_no_key_and_streams_the_video_directly(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=True, keys=False)
    server.request_video("open.png")
    server.wait_status("open.png", "completed")
    page = open_page(f"{server.url}/ui/videos/open.png", None)
    page.locator("#who-label", has_text="open mode (no keys)").wait_for()
    page.locator("#status-badge", has_text="completed").wait_for()
    assert page.get_by_role("button", name="Regenerate").count() == 1
    wait_js(page, "document.getElementById('player').readyState >= 2")
    src = page.evaluate("document.getElementById('player').currentSrc")
    assert src.startswith(f"{server.url}/v1/videos/open.png/content")

    page.get_by_role("button", name="Regenerate").click()
    page.locator("#confirm").get_by_role("button", name="Confirm").click()
    page.locator('#timeline tbody tr[data-version="6"]').wait_for()
    page.locator("#status-badge", has_text="completed").wait_for()
    with server.api() as c:
        events = [e["event_type"] for e in c.get("/v1/videos/open.png/history").json()["items"]]
    assert events[3:] == ["VideoRequested", "VideoProcessingStarted", "VideoCompleted"]
    assert page.js_errors == []


def test_keyboard_alone_can_cancel_and_escape_backs_out(
    start_server: StartServer, open_page: OpenPage
) -> None:
    server = start_server(worker=False)
    server.request_video("keys.png")
    page = open_page(f"{server.url}/ui/videos/keys.png", server.keys[Role.ADMIN])
    page.locator("#status-badge", has_text="pending").wait_for()

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    for _ in range(20):  # Tab through the page to the Cancel button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Cancel":
            break
    else:
        raise AssertionError("Cancel is not reachable with Tab")

    page.keyboard.press("Enter")
    assert page.locator("#confirm").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#confirm").is_visible()
    assert server.status("keys.png")["video_status"] == "pending"

    page.keyboard.press("Enter")  # focus went back to Cancel
    assert page.evaluate("document.activeElement.id") == "confirm-reason"
    page.keyboard.type("typed only")
    page.keyboard.press("Enter")
    page.locator("#status-badge", has_text="cancelled").wait_for()
    with server.api() as c:
        assert c.get("/v1/videos/keys.png/history").json()["items"][-1]["reason"] == "typed only"
    assert page.js_errors == []


def test_webhooks_page_lists_deliveries_and_replays_a_failed_one(
    start_server: StartServer, open_page: OpenPage
) -> None:
    receiver = Receiver(default=500)  # refuses until it is told otherwise
    receiver.start()
    try:
        server = start_server(worker=True)
        with server.api(Role.ADMIN) as c:
            endpoint = c.post("/v1/webhooks/endpoints", json={"url": receiver.url}).json()
        server.request_video("hooked.png", "scene")
        server.wait_status("hooked.png", "completed")
        page = open_page(f"{server.url}/ui/webhooks", server.keys[Role.ADMIN])
        page.locator(f'#endpoints tbody tr[data-endpoint="{endpoint["id"]}"]').wait_for()
        page.locator('#deliveries tbody tr[data-status="failed"]').first.wait_for()
        receiver.default = 200
        page.get_by_role("button", name="Replay failed").click()
        page.locator("#replay-result", has_text="pending again").wait_for()
        wait_js(page, "true")
        deadline = time.monotonic() + 20
        while len(receiver.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(receiver.received) == 3  # requested, processing, completed: all replayed
        assert page.js_errors == []
        screenshot(page, "webhooks-desktop")
    finally:
        receiver.stop()
