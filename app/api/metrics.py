"""Prometheus metrics: HTTP traffic, appends, retries and failures, and
scrape-time gauges of the queue, the projection and the worker.

Counters count what this process did; gauges read the database when
`/metrics` is scraped, so every process reports the same totals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

from app.errors import AppError
from app.events.types import RecordedEvent
from app.lifecycle import EventType, Status
from app.service import utcnow
from app.service.queries import VideoQueries
from app.service.webhooks import Claimed, Outcome, WebhookService

log = logging.getLogger(__name__)


class Metrics:
    """The app's metrics, in a registry of its own (one per app, so tests can
    build many apps in one process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "vidledger_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "vidledger_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.deliveries = Counter(
            "vidledger_webhook_deliveries_total",
            "Webhook delivery attempts by endpoint and outcome (2xx, 4xx, 5xx, error)",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.appended = Counter(
            "vidledger_events_appended_total",
            "Events appended, by type",
            ["event_type"],
            registry=registry,
        )
        self.retries = Counter(
            "vidledger_retries_total",
            "Retries scheduled, by error code",
            ["code"],
            registry=registry,
        )
        self.failures = Counter(
            "vidledger_failures_total",
            "Videos failed, by error code",
            ["code"],
            registry=registry,
        )
        self.lease_expiries = Counter(
            "vidledger_lease_expiries_total",
            "Leases the reaper found expired",
            registry=registry,
        )
        # The labelled children of `http`, by (route, method, status):
        # `labels()` takes a lock and builds them anew on every call. A dict of
        # a few hundred entries at most (route templates, not paths).
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def http(self, scope: Scope, status: int, seconds: float) -> None:
        """Count and time one HTTP request by its route template."""
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        key = (template, scope["method"], status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (
                self.requests.labels(template, key[1], str(status)),
                self.latency.labels(template, key[1]),
            )
        children[0].inc()
        children[1].observe(seconds)

    def on_delivery(self, claimed: Claimed, outcome: Outcome) -> None:
        code = outcome.status_code
        kind = f"{code // 100}xx" if code is not None else "error"
        self.deliveries.labels(claimed.endpoint_id, kind).inc()

    def on_append(self, recorded: list[RecordedEvent]) -> None:
        for ev in recorded:
            self.appended.labels(ev.event_type.value).inc()
            error = ev.data.get("error") if isinstance(ev.data, dict) else None
            code = error["code"] if error else None
            if ev.event_type is EventType.RETRY_SCHEDULED and code is not None:
                self.retries.labels(code).inc()
            elif ev.event_type is EventType.FAILED and code is not None:
                self.failures.labels(code).inc()
            if code == "lease.expired" or (
                ev.actor == "system:reaper" and ev.event_type is EventType.CANCELLED
            ):
                self.lease_expiries.inc()


class StateCollector(Collector):
    """Gauges read at scrape time: queue, oldest pending, projection, worker."""

    def __init__(
        self,
        queries: VideoQueries,
        worker_load: Callable[[], tuple[int, int]] | None,
        webhooks: WebhookService | None = None,
    ):
        self.queries = queries
        self.worker_load = worker_load
        self.webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vidledger_database_up", "1 when the database answered the scrape")
        try:
            stats = self.queries.stats(utcnow())
            projections = self.queries.projections()
            hidden, lag = self.queries.feed_lag(utcnow())
            pending = self.webhooks.pending() if self.webhooks is not None else []
        except AppError as exc:
            log.warning("metrics: %s", exc.detail)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "vidledger_videos", "Images by current video status", labels=["status"]
        )
        for st in Status:
            depth.add_metric([st.value], stats["by_status"].get(st.value, 0))
        yield depth
        yield GaugeMetricFamily(
            "vidledger_queue_due", "Pending videos that are due now", value=stats["due"]
        )
        yield GaugeMetricFamily(
            "vidledger_oldest_pending_age_seconds",
            "Age of the oldest pending request (0 when none)",
            value=stats["oldest_pending_age_seconds"] or 0.0,
        )
        by_generator = GaugeMetricFamily(
            "vidledger_generator_videos",
            "Images by their current generation's generator and status",
            labels=["generator", "status"],
        )
        for generator, counts in sorted(stats["by_generator"].items()):
            for st in Status:
                if st is not Status.NONE:
                    by_generator.add_metric([generator, st.value], counts.get(st.value, 0))
        yield by_generator
        queue_due = GaugeMetricFamily(
            "vidledger_generator_queue_due", "Pending videos due now", labels=["generator"]
        )
        queue_age = GaugeMetricFamily(
            "vidledger_generator_oldest_pending_age_seconds",
            "Age of the generator's oldest pending request",
            labels=["generator"],
        )
        for generator, queue in sorted(stats["queue_by_generator"].items()):
            queue_due.add_metric([generator], queue["due"])
            queue_age.add_metric([generator], queue["oldest_pending_age_seconds"] or 0.0)
        yield queue_due
        yield queue_age
        failures = GaugeMetricFamily(
            "vidledger_generator_failed_videos",
            "Failed videos by generator and error code",
            labels=["generator", "code"],
        )
        for generator, codes in sorted(stats["failures_by_generator"].items()):
            for code, n in sorted(codes.items()):
                failures.add_metric([generator, code], n)
        yield failures
        yield GaugeMetricFamily(
            "vidledger_feed_hidden_events",
            "Committed events the feed holds back behind an older open transaction",
            value=hidden,
        )
        yield GaugeMetricFamily(
            "vidledger_feed_lag_seconds",
            "Age of the oldest event the feed holds back (0 when none)",
            value=lag,
        )
        waiting = GaugeMetricFamily(
            "vidledger_webhook_pending", "Pending webhook deliveries", labels=["endpoint"]
        )
        oldest = GaugeMetricFamily(
            "vidledger_webhook_oldest_pending_age_seconds",
            "Age of the endpoint's oldest pending delivery",
            labels=["endpoint"],
        )
        for endpoint_id, count, age in pending:
            waiting.add_metric([endpoint_id], count)
            oldest.add_metric([endpoint_id], age)
        yield waiting
        yield oldest
        rows = GaugeMetricFamily("vidledger_projection_rows", "Rows", labels=["projection"])
        last = GaugeMetricFamily(
            "vidledger_projection_last_position", "Last log position applied", labels=["projection"]
        )
        stale = GaugeMetricFamily(
            "vidledger_projection_stale", "1 when the stored version differs", labels=["projection"]
        )
        for p in projections:
            rows.add_metric([p.name], p.rows)
            last.add_metric([p.name], p.last_position)
            stale.add_metric([p.name], int(p.version != p.expected_version))
        yield rows
        yield last
        yield stale
        if self.worker_load is not None:
            busy, capacity = self.worker_load()
            workers = GaugeMetricFamily(
                "vidledger_worker_slots", "In-process worker slots by state", labels=["state"]
            )
            workers.add_metric(["busy"], busy)
            workers.add_metric(["idle"], capacity - busy)
            yield workers
