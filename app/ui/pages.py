"""The dashboard's pages: public HTML shells that hold no data.

Every number on a page comes from the JSON API, fetched by the page's
script with the key the operator pasted (kept in sessionStorage). So the
dashboard has exactly the API's auth: a shell shows nothing without a key
that the API accepts, and a button the key's role may not use is hidden,
and refused by the API anyway.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_URL = "/ui/static"

templates = Jinja2Templates(directory=HERE / "templates")

#: Scripts and styles only from this origin, no inline script; videos may
#: also come from blob: URLs (a keyed video is fetched with its header).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)

NAV = [
    ("overview", "/ui", "Overview"),
    ("videos", "/ui/videos", "Videos"),
    ("projections", "/ui/projections", "Projections"),
    ("webhooks", "/ui/webhooks", "Webhooks"),
]


def _page(request: Request, template: str, page: str, title: str, **extra: object) -> Response:
    context = {"page": page, "title": title, "nav": NAV, "static": STATIC_URL, **extra}
    return templates.TemplateResponse(request, template, context, headers=SECURITY_HEADERS)


@router.get("")
def overview(request: Request) -> Response:
    return _page(request, "overview.html", "overview", "Overview")


@router.get("/")
def overview_slash() -> Response:
    return RedirectResponse("/ui", status_code=308)


@router.get("/videos")
def videos(request: Request) -> Response:
    return _page(request, "videos.html", "videos", "Videos")


@router.get("/videos/{img_name:path}")
def image(request: Request, img_name: str) -> Response:
    # The name is only echoed into the page (autoescaped); the API checks it.
    return _page(request, "image.html", "image", img_name, img_name=img_name)


@router.get("/projections")
def projections(request: Request) -> Response:
    return _page(request, "projections.html", "projections", "Projections")


@router.get("/webhooks")
def webhooks(request: Request) -> Response:
    return _page(request, "webhooks.html", "webhooks", "Webhooks")


@router.get("/signin")
def signin(request: Request) -> Response:
    return _page(request, "signin.html", "signin", "Sign in")


def mount(app: FastAPI) -> None:
    """Add the dashboard's pages and its static files to `app`."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="ui-static")
