"""One bootstrap: the database, the use cases and the wake-up signals, from Settings.

The API (`create_app`), the CLI, the worker and the test fixtures all build
through here, so each edge gets the same wiring. Only this module and the
edges read `Settings`; everything it builds receives plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.config import Settings, schedule_of
from app.db import migrate
from app.db.engine import Database, open_database
from app.events.types import RecordedEvent
from app.projections import rebuild
from app.service import GeneratorNames, Policy, VideoService
from app.service.queries import VideoQueries
from app.service.webhook_urls import parse_networks
from app.service.webhooks import WebhookPolicy, WebhookService
from app.video_files import VideoFiles
from app.worker.generators import catalog
from app.worker.generators.catalog import Catalog


def policy_of(settings: Settings, generators: Catalog | None = None) -> Policy:
    offered = generators or catalog.builtin()
    return Policy(
        max_attempts=settings.max_attempts,
        lease_seconds=settings.lease_seconds,
        backoff_base_seconds=settings.backoff_base_seconds,
        backoff_cap_seconds=settings.backoff_cap_seconds,
        generators=GeneratorNames(offered.names, offered.default),
    )


def webhook_policy_of(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(
        schedule=schedule_of(settings.webhook_retry_schedule),
        timeout_seconds=settings.webhook_timeout_seconds,
        disable_after_seconds=settings.webhook_disable_after_seconds,
        allowed_networks=parse_networks(settings.webhook_allowed_networks),
    )


def open_db(settings: Settings, *, pool_size: int | None = None) -> Database:
    """The database `settings` name (and its read replica, if one is set)."""
    return open_database(
        settings.database_url,
        pool_size=pool_size or settings.pool_size,
        replica_url=settings.read_replica_url,
    )


def upgrade(url: str, *, run: Callable[[Database], object] = rebuild.rebuild) -> bool:
    """Bring the schema at `url` to the newest revision, then rebuild a
    projection whose stored version differs from the code's (with `run`).
    Returns whether it rebuilt."""
    migrate.upgrade(url)
    db = open_database(url, pool_size=2)
    try:
        return rebuild_if_stale(db, run=run)
    finally:
        db.dispose()


def rebuild_if_stale(db: Database, *, run: Callable[[Database], object] = rebuild.rebuild) -> bool:
    """Rebuild the status projection with `run(db)` if its stored version is not the code's."""
    if not rebuild.stale(db):
        return False
    run(db)
    return True


@dataclass
class Services:
    """What an edge works with, built once per process."""

    db: Database
    videos: VideoService
    queries: VideoQueries
    #: The generators file's generators (or the built-in one).
    generators: Catalog
    webhooks: WebhookService
    #: Called with the events of every command once it has committed.
    listeners: list[Callable[[list[RecordedEvent]], None]] = field(default_factory=list)


def build(settings: Settings, *, db: Database | None = None) -> Services:
    """The use cases over `db` (opened from `settings` when not given).

    Listeners added to `Services.listeners` are called after every command
    that appended: the API adds its feed signal and metrics, the embedded
    worker its wake-up.
    """
    generators = catalog.load(settings.generators_file)  # a bad file stops here, in one line
    database = db or open_db(settings)
    listeners: list[Callable[[list[RecordedEvent]], None]] = []

    def on_append(recorded: list[RecordedEvent]) -> None:
        for listen in listeners:
            listen(recorded)

    videos = VideoService(
        database,
        policy_of(settings, generators),
        on_append=on_append,
        files=VideoFiles(settings.videos_dir),
    )
    webhooks = WebhookService(database, webhook_policy_of(settings))
    return Services(database, videos, VideoQueries(database), generators, webhooks, listeners)
