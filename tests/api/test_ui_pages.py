"""/ui page shells: public, data-free, escaped, locked down by CSP; static files served."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.keys import Role, create_key

PAGES = ["/ui", "/ui/videos", "/ui/videos/cat.png", "/ui/projections", "/ui/signin"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_html_shells_with_a_strict_policy(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert '<script type="module" src="/ui/static/' in r.text
    assert "<script>" not in r.text  # no inline script: everything comes from the API


def test_shells_need_no_key_and_carry_no_data(settings: Settings, database: Database) -> None:
    create_key(database, "ops", Role.READ, datetime.now(UTC))
    with TestClient(create_app(settings, db=database)) as c:
        c.post("/v1/videos", json={"img_name": "secret.png", "source_type": "scene"})
        assert c.get("/v1/stats").status_code == 401
        page = c.get("/ui")
        assert page.status_code == 200 and "secret.png" not in page.text


def test_an_image_name_is_escaped_in_its_page(client: TestClient) -> None:
    r = client.get("/ui/videos/%3Cscript%3Ealert(1)%3C%2Fscript%3E.png")
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in r.text


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ui.css", "text/css"), ("common.js", "javascript"), ("overview.js", "javascript")],
)
def test_static_files_are_served(client: TestClient, name: str, kind: str) -> None:
    r = client.get(f"/ui/static/{name}")
    assert r.status_code == 200 and kind in r.headers["content-type"]


def test_ui_slash_redirects_and_pages_stay_out_of_the_api_schema(client: TestClient) -> None:
    r = client.get("/ui/", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui"
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
