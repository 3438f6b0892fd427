"""`create_app(settings)`: the HTTP composition root."""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from app import bootstrap
from app.api import errors
from app.api.deps import AuthGate
from app.api.metrics import Metrics, StateCollector
from app.api.middleware import Edge
from app.api.routes import admin, events, generators, me, stream, videos, webhooks, worker
from app.api.views import event_body
from app.config import Settings
from app.db.engine import Database
from app.feed import FeedSignal
from app.ui import mount as mount_ui
from app.webhooks.dispatcher import Dispatcher
from app.worker.backend import LocalBackend
from app.worker.loop import run_reaper as reaper_loop
from app.worker.runtime import WakeOnPending, start_embedded

log = logging.getLogger(__name__)

DESCRIPTION = """\
vidledger tells an image app whether an image has a video and where that
video is in its life. Every transition is an event in an append-only log;
the status you read is a projection of that log.

Errors are RFC 9457 problem JSON with a stable `code`.
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def freeze_startup_heap() -> None:
    """Put everything a server process has built so far (its modules, the app,
    the statements) out of the garbage collector's reach, just before it
    serves. A full collection then walks only what requests made: under
    load one took about 95 ms of the one core the API has, every 2 s, and
    now takes 1 or 2 ms (`make bench`, HTTP). For servers, not for tests,
    which build many apps in one process."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    host: str = "127.0.0.1",
    run_worker: bool = False,
    run_reaper: bool = False,
    worker_generators: list[str] | None = None,
    run_dispatcher: bool = False,
) -> FastAPI:
    """Build the app. `host` is where it will listen: open mode only on loopback.

    `run_worker` runs the worker loop in-process (the embedded default);
    `run_reaper` alone runs just the expired-lease reaper. The embedded
    worker runs `worker_generators`, or every configured generator.
    `run_dispatcher` posts webhooks (every `serve` process does).
    """
    services = bootstrap.build(settings, db=db)
    embedded_generators = services.generators.select(worker_generators) if run_worker else {}
    database, service = services.db, services.videos
    owns_db = db is None
    wake = WakeOnPending()
    feed_signal = FeedSignal()
    metrics = Metrics(CollectorRegistry())
    dispatch_wake = threading.Event()
    services.listeners += [
        wake,
        lambda _: feed_signal.notify(),
        metrics.on_append,
        lambda _: dispatch_wake.set(),
    ]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if app.state.auth.loopback and not app.state.auth.keys_exist():
            log.warning(
                "no API keys exist: running OPEN on loopback; every request acts as "
                "'anonymous' with role admin. Create a key with 'vidledger keys create'."
            )
        stop = threading.Event()

        # Appends by other processes reach live feed readers through
        # the wake probe (PostgreSQL only; on SQLite they wait for the idle poll).
        def on_notify(_: str) -> None:
            feed_signal.notify()
            dispatch_wake.set()

        database.backend.start_listener(settings.database_url, on_notify, stop)
        dispatcher = None
        if run_dispatcher:
            dispatcher = Dispatcher(
                services.webhooks,
                event_body,
                wake=dispatch_wake,
                stop=stop,
                on_outcome=metrics.on_delivery,
            )
            threading.Thread(target=dispatcher.run, name="webhooks", daemon=True).start()
        embedded = None
        if run_worker:
            embedded = start_embedded(
                settings,
                service,
                wake.event,
                embedded_generators,
                concurrency=settings.worker_concurrency,
            )
            worker_load[0] = lambda: (embedded.worker.busy(), embedded.worker.config.concurrency)
        elif run_reaper:
            threading.Thread(
                target=reaper_loop,
                args=(LocalBackend(service), stop, settings.reap_interval_seconds),
                daemon=True,
            ).start()
        yield
        stop.set()
        dispatch_wake.set()
        feed_signal.close()
        if embedded is not None:
            await run_in_threadpool(embedded.stop)
        if owns_db:
            database.dispose()

    app = FastAPI(
        title="vidledger",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=errors.responses(413),
    )
    app.state.settings = settings
    app.state.db = database
    app.state.service = service
    app.state.files = service.files
    app.state.queries = services.queries
    app.state.generators = services.generators
    app.state.webhooks = services.webhooks
    app.state.auth = AuthGate(database, loopback=is_loopback(host))
    app.state.metrics_registry = metrics.registry
    worker_load: list[Callable[[], tuple[int, int]] | None] = [None]
    metrics.registry.register(
        StateCollector(
            app.state.queries,
            lambda: worker_load[0]() if worker_load[0] else (0, 0),
            services.webhooks,
        )
    )
    app.state.feed_signal = feed_signal
    app.state.feed_ping_seconds = 15.0  # SSE keep-alive comments; tests shorten it

    errors.install(app)
    videos.add_hot_routes(app)  # first: matched before any included router
    for module in (videos, generators, events, stream, worker, admin, webhooks, me):
        app.include_router(module.router)
    mount_ui(app)
    if settings.cors_origins:  # none unless configured: browsers may not call cross-site
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Idempotent-Replayed", "X-Request-ID"],
        )
    app.add_middleware(Edge, metrics=metrics)
    return app
