"""The HTTP baseline: a minimal FastAPI app doing what vidledger's hot routes
do in SQL, through a plain psycopg2 pool, with none of the project's layers.

`GET /v1/videos/{img_name}` runs the same SELECT as a status read (the
projection row joined to its lease); `POST /v1/videos` appends one event and
upserts its row in one statement, in autocommit, as `bench/writes.py`'s raw
baseline does.
Served by uvicorn with the same settings as the project (`bench/servers.py`).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg2.extras
from fastapi import FastAPI
from fastapi.responses import Response
from psycopg2.pool import ThreadedConnectionPool
from pydantic import BaseModel

from bench.writes import RAW_REQUEST

#: Connections, as many as the project's reader pool (Settings.pool_size).
POOL = 20

STATUS_SQL = """
SELECT s.img_name, s.has_video, s.video_status, s.video_filename, s.source_type, s.prompt,
       s.params, s.generation, s.attempts, s.error_code, s.error_message, s.error_retryable,
       s.cancel_requested, s.not_before, s.requested_at, s.started_at, s.completed_at,
       s.updated_at, s.version, s.last_position, s.queued_seconds, s.generation_seconds,
       l.progress
FROM image_video_status AS s LEFT OUTER JOIN video_task_leases AS l ON l.img_name = s.img_name
WHERE s.img_name = %s
"""


class RequestIn(BaseModel):
    img_name: str
    source_type: str


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create(dsn: str) -> FastAPI:
    # psycopg2's pool raises when it is empty rather than waiting, and it
    # closes connections returned above minconn: a semaphore makes threads
    # wait their turn, and minconn == maxconn keeps every connection open.
    pool = ThreadedConnectionPool(POOL, POOL, dsn)
    turns = threading.BoundedSemaphore(POOL)

    @contextmanager
    def connection() -> Iterator[Any]:
        with turns:
            conn = pool.getconn()
            conn.autocommit = True  # reads in autocommit, as the project's reader does
            try:
                yield conn
            finally:
                pool.putconn(conn)

    app = FastAPI()
    data = psycopg2.extras.Json(
        {
            "source_type": "scene",
            "prompt": None,
            "regenerate": False,
            "params": {"duration_seconds": 3.0, "fps": 24, "max_size": 1280},
        }
    )

    @app.get("/v1/videos/{img_name:path}")
    def status(img_name: str) -> Response:
        with connection() as conn, conn.cursor() as cur:
            cur.execute(STATUS_SQL, (img_name,))
            row = cur.fetchone()
            names = [d.name for d in cur.description]
        if row is None:
            return _json({"img_name": img_name, "video_status": "none", "version": 0})
        return _json(dict(zip(names, row, strict=True)))

    @app.post("/v1/videos", status_code=202)
    def request(body: RequestIn) -> Response:
        with connection() as conn, conn.cursor() as cur:
            # The event and its row in one statement, alone in autocommit.
            cur.execute(
                RAW_REQUEST,
                {"event_id": str(uuid.uuid4()), "img_name": body.img_name, "data": data},
            )
        return _json({"img_name": body.img_name, "video_status": "pending", "version": 1}, 202)

    return app


def app() -> FastAPI:
    """uvicorn's factory: the database comes from VIDLEDGER_BENCH_DSN."""
    return create(os.environ["VIDLEDGER_BENCH_DSN"])
