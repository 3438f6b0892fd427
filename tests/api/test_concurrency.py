"""Concurrent HTTP writers against one image: exactly one wins."""

from __future__ import annotations

import asyncio

import httpx

from app.api import create_app
from app.config import Settings
from app.db.engine import Database
from app.events import store


async def _burst(app: object, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body = {"img_name": "hot.png", "source_type": "scene"}
        return await asyncio.gather(*(client.post("/v1/videos", json=body) for _ in range(n)))


def test_32_concurrent_requests_for_one_image_give_one_202_and_one_event(
    settings: Settings, database: Database
) -> None:
    app = create_app(settings, db=database)
    responses = asyncio.run(_burst(app, 32))
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 31
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"video_in_progress"}
    with database.read() as conn:
        assert len(store.read_stream(conn, "hot.png")) == 1
