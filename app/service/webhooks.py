"""Webhooks: endpoints (admin commands), and the two halves of delivery.

- Fan-out follows the log: each enabled endpoint reads the feed after its
  own cursor and turns each event it wants into one delivery, with the body
  it will always be sent with. The feed skips nothing, so neither does this.
- Dispatch leases due deliveries, and records each attempt's outcome: done
  on a 2xx only, else retried on the schedule, then `failed` (kept, and
  replayable). A 410 disables the endpoint, and so do failures without a
  success for `disable_after_seconds`.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.db import webhooks as store
from app.db.engine import Database
from app.db.tables import webhook_deliveries
from app.errors import NotFound, ValidationFailed
from app.events import store as log
from app.events.types import Json, RecordedEvent
from app.lifecycle import EventType
from app.service.base import utcnow
from app.service.results import FeedEvent, Page
from app.service.webhook_urls import Network, RefusedUrl, check
from app.timestamps import rfc3339

#: How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)
TEST_EVENT = "webhook.test"
EVENT_TYPES = {t.value for t in EventType}
FAN_OUT_PAGE = 500
#: How often a success is noted on its endpoint (`last_delivered_at`).
NOTE_EVERY = timedelta(seconds=1)
MIN_TIME = datetime.min.replace(tzinfo=UTC)
#: At most this much of a receiver's answer is kept.
RESPONSE_KEPT = 256


@dataclass(frozen=True)
class WebhookPolicy:
    schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    timeout_seconds: float = 15.0
    disable_after_seconds: float = 5 * 86400
    allowed_networks: tuple[Network, ...] = ()
    #: Jitter: each wait is scaled by a random factor in [1 - j, 1 + j].
    jitter: float = 0.1


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    description: str | None
    event_types: list[str] | None
    source_types: list[str] | None
    state: str
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Delivery:
    id: int
    endpoint_id: str
    message_id: str
    event_type: str
    img_name: str | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    last_response: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class Claimed:
    """A leased delivery, with what it takes to send it."""

    id: int
    endpoint_id: str
    message_id: str
    body: str
    attempts: int
    url: str
    secrets: list[str]
    token: str
    #: The lease's end: a send that could not finish before it is not begun.
    lease_until: datetime


@dataclass(frozen=True)
class Outcome:
    """What one attempt to send came to."""

    status_code: int | None
    latency_ms: float
    error: str | None = None
    response: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        description=row.description,
        event_types=row.event_types,
        source_types=row.source_types,
        state=row.state,
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        **{name: getattr(row, name) for name in Delivery.__dataclass_fields__},
    )


def new_secret() -> str:
    """`whsec_` and 24 random bytes in base64: the Standard Webhooks secret format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class WebhookService:
    db: Database
    policy: WebhookPolicy = field(default_factory=WebhookPolicy)
    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)
    #: When this process last noted a success on each endpoint.
    _noted: dict[str, datetime] = field(default_factory=dict, repr=False)

    # --- endpoints (admin) ------------------------------------------------------------

    def _checked_url(self, url: str) -> str:
        try:
            check(url, self.policy.allowed_networks)
        except RefusedUrl as exc:
            message = f"refused url: {exc}"
            errors = [{"loc": ["body", "url"], "msg": message}]
            raise ValidationFailed(message, errors=errors) from None
        return url

    @staticmethod
    def _checked_types(types: list[str] | None) -> list[str] | None:
        unknown = sorted(set(types or []) - EVENT_TYPES)
        if unknown:
            message = f"unknown event type {unknown[0]!r}; known: {', '.join(sorted(EVENT_TYPES))}"
            raise ValidationFailed(
                message, errors=[{"loc": ["body", "event_types"], "msg": message}]
            )
        return types or None

    def create(
        self,
        url: str,
        *,
        description: str | None = None,
        event_types: list[str] | None = None,
        source_types: list[str] | None = None,
    ) -> tuple[Endpoint, str]:
        """A new endpoint, following the log from now on, and its secret."""
        now = self.clock()
        secret = new_secret()
        endpoint_id = "ep_" + secrets.token_hex(8)
        values: dict[str, Any] = {
            "id": endpoint_id,
            "url": self._checked_url(url),
            "description": description,
            "event_types": self._checked_types(event_types),
            "source_types": source_types or None,
            "state": store.ENABLED,
            "secret": secret,
            "created_at": now,
            "updated_at": now,
        }
        with self.db.write() as conn:
            # From here on: the newest visible event's cursor, or the start of an empty log.
            values["feed_cursor"] = log.read_tail(conn, limit=1).cursor
            store.add_endpoint(conn, values)
            row = store.endpoint(conn, endpoint_id)
        return _endpoint(row), secret

    def get(self, endpoint_id: str) -> Endpoint:
        with self.db.read() as conn:
            row = store.endpoint(conn, endpoint_id)
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        return _endpoint(row)

    def list_endpoints(self, cursor: str | None, limit: int) -> Page[Endpoint]:
        with self.db.read() as conn:
            rows = store.list_endpoints(conn, cursor, limit + 1)
        items = [_endpoint(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def update(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint:
        """Change url, description, filters or state (`enabled`, `disabled`)."""
        values: dict[str, Any] = {"updated_at": self.clock()}
        if "url" in changes:
            values["url"] = self._checked_url(changes["url"])
        if "description" in changes:
            values["description"] = changes["description"]
        if "event_types" in changes:
            values["event_types"] = self._checked_types(changes["event_types"])
        if "source_types" in changes:
            values["source_types"] = changes["source_types"] or None
        if "state" in changes:
            values["state"] = changes["state"]
            disabled = changes["state"] == store.DISABLED
            values["disabled_reason"] = "disabled by an admin" if disabled else None
            values["failing_since"] = None
        with self.db.write() as conn:
            if store.endpoint(conn, endpoint_id, lock=True) is None:
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")
            store.change_endpoint(conn, endpoint_id, values)
            row = store.endpoint(conn, endpoint_id)
        return _endpoint(row)

    def delete(self, endpoint_id: str) -> None:
        with self.db.write() as conn:
            if not store.remove_endpoint(conn, endpoint_id):
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")

    def rotate_secret(self, endpoint_id: str) -> str:
        """A new secret; the old one keeps signing beside it for 24 hours."""
        now, secret = self.clock(), new_secret()
        with self.db.write() as conn:
            row = store.endpoint(conn, endpoint_id, lock=True)
            if row is None:
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")
            store.change_endpoint(
                conn,
                endpoint_id,
                {
                    "secret": secret,
                    "previous_secret": row.secret,
                    "previous_secret_until": now + ROTATION_OVERLAP,
                    "updated_at": now,
                },
            )
        return secret

    def send_test(self, endpoint_id: str) -> None:
        """Queue a `webhook.test` message for the endpoint."""
        now = self.clock()
        message_id = "msg_test_" + secrets.token_hex(12)
        data = {"endpoint_id": endpoint_id}
        body = orjson.dumps({"type": TEST_EVENT, "timestamp": rfc3339(now), "data": data}).decode()
        with self.db.write() as conn:
            if store.endpoint(conn, endpoint_id) is None:
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")
            store.add_deliveries(
                conn,
                self.db.backend,
                [self._delivery_row(endpoint_id, message_id, TEST_EVENT, None, None, body, now)],
            )

    # --- the delivery log -------------------------------------------------------------

    def deliveries(
        self, endpoint_id: str, status: str | None, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        after = int(cursor) if cursor is not None and cursor.isdigit() else None
        if cursor is not None and after is None:
            raise ValidationFailed("cursor: not a cursor this endpoint gave")
        with self.db.read() as conn:
            if store.endpoint(conn, endpoint_id) is None:
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")
            rows = store.list_deliveries(conn, endpoint_id, status, after, limit + 1)
        items = [_delivery(r) for r in rows[:limit]]
        return Page(items, str(items[-1].id) if len(rows) > limit else None)

    def replay_delivery(self, delivery_id: int) -> Delivery:
        with self.db.write() as conn:
            if store.delivery(conn, delivery_id) is None:
                raise NotFound(f"no webhook delivery {delivery_id}")
            store.replay(conn, webhook_deliveries.c.id == delivery_id, self.clock())
            row = store.delivery(conn, delivery_id)
        return _delivery(row)

    def replay(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        since: datetime | None = None,
        after: str | None = None,
    ) -> int:
        """Send again an endpoint's failed deliveries (`status`), those created
        since a time, or those of events after a feed cursor."""
        d = webhook_deliveries.c
        where = d.endpoint_id == endpoint_id
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without a zone is UTC
        if status is not None:
            where = where & (d.status == status)
        if since is not None:
            where = where & (d.created_at >= since)
        with self.db.read() as conn:
            if store.endpoint(conn, endpoint_id) is None:
                raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        if after is None:
            with self.db.write() as conn:
                return store.replay(conn, where, self.clock())
        # The events after the cursor, in feed order, a page at a time.
        replayed = 0
        cursor: str | None = after
        while True:
            with self.db.read() as conn:
                try:
                    page = log.read_all(conn, after=cursor, limit=1000)
                except ValueError as exc:
                    message = "after: not a cursor of this log"
                    raise ValidationFailed(
                        message, errors=[{"loc": ["body", "after"], "msg": message}]
                    ) from exc
            if not page.events:
                return replayed
            ids = [str(e.event_id) for e in page.events]
            with self.db.write() as conn:
                replayed += store.replay(conn, where & d.message_id.in_(ids), self.clock())
            cursor = page.cursor

    # --- fan-out ------------------------------------------------------------------------

    @staticmethod
    def _delivery_row(
        endpoint_id: str,
        message_id: str,
        event_type: str,
        img_name: str | None,
        cursor: str | None,
        body: str,
        now: datetime,
        after: tuple[str, bool] | None = None,
    ) -> dict[str, Any]:
        """A new delivery; `after` is the (message, still pending) of the one
        before it of its image, which it waits behind while that is pending."""
        return {
            "endpoint_id": endpoint_id,
            "message_id": message_id,
            "event_type": event_type,
            "img_name": img_name,
            "after_message_id": after[0] if after else None,
            "event_cursor": cursor,
            "body": body,
            "status": store.PENDING,
            "attempts": 0,
            "next_attempt_at": None if after and after[1] else now,
            "created_at": now,
        }

    @staticmethod
    def _body(event: RecordedEvent, data: Json) -> str:
        """What is POSTed: `{"type", "timestamp", "data"}`."""
        body = {
            "type": event.event_type.value,
            "timestamp": rfc3339(event.recorded_at),
            "data": data,
        }
        return orjson.dumps(body).decode()

    def fan_out(self, render: Callable[[FeedEvent], Json]) -> int | None:
        """Turn the events each enabled endpoint has not seen yet into its
        deliveries; returns how many were made, or None if there was nothing
        to do (0: there was, but filtered out, or its endpoint was locked by
        another transaction, to try again). `render` is the Event as
        `/v1/events` shows it.

        Each delivery names the one before it of its endpoint and image, and
        waits (no `next_attempt_at`) while that one is pending."""
        made = 0
        if not self._anything_to_fan_out():
            return None  # no write transaction for nothing: on SQLite it waits on every writer
        bodies: dict[str, str] = {}  # an event's body is the same for every endpoint
        with self.db.write() as conn:
            backend = self.db.backend
            now = self.clock()
            for ep in store.endpoints_to_follow(conn, backend):
                page = log.read_all(conn, after=ep.feed_cursor, limit=FAN_OUT_PAGE)
                if not page.events:
                    continue
                names = sorted({e.img_name for e in page.events})
                sources = store.source_types_of(conn, names if ep.source_types else [])
                newest = store.newest_of_images(conn, ep.id, names)
                rows = []
                for event in page.events:
                    if ep.event_types and event.event_type.value not in ep.event_types:
                        continue
                    if ep.source_types and sources.get(event.img_name) not in ep.source_types:
                        continue
                    message_id = str(event.event_id)
                    cursor = log.cursor_of(conn, event)
                    if message_id not in bodies:
                        data = render(FeedEvent(event, cursor))
                        bodies[message_id] = self._body(event, data)
                    before = newest.get(event.img_name)
                    row = self._delivery_row(
                        ep.id,
                        message_id,
                        event.event_type.value,
                        event.img_name,
                        cursor,
                        bodies[message_id],
                        now,
                        after=before,
                    )
                    rows.append(row)
                    newest[event.img_name] = (message_id, True)
                store.add_deliveries(conn, backend, rows)
                store.change_endpoint(conn, ep.id, {"feed_cursor": page.cursor})
                made += len(rows)
        return made

    # --- dispatch -----------------------------------------------------------------------

    def _anything_to_fan_out(self) -> bool:
        """Has an enabled endpoint events after its cursor? (A read.)"""
        with self.db.read() as conn:
            for _, cursor in store.enabled_endpoints(conn):
                if log.read_all(conn, after=cursor, limit=1).events:
                    return True
        return False

    def claim(self, limit: int, token: str) -> list[Claimed]:
        now = self.clock()
        lease_until = now + timedelta(seconds=self.policy.timeout_seconds * 2 + 5)
        with self.db.read() as conn:
            due = store.due(conn, now, limit)
        if not due:
            return []
        with self.db.write() as conn:
            rows = store.lease(conn, self.db.backend, due, now, token, lease_until)
        claimed = []
        for r in rows:
            keys = [r.secret]
            if r.previous_secret and r.previous_secret_until and r.previous_secret_until > now:
                keys.append(r.previous_secret)
            claimed.append(
                Claimed(
                    r.id,
                    r.endpoint_id,
                    r.message_id,
                    r.body,
                    r.attempts,
                    r.url,
                    keys,
                    token,
                    lease_until,
                )
            )
        return claimed

    def _wait(self, attempt: int) -> float | None:
        """Seconds before attempt `attempt + 1`, or None once the schedule is used up."""
        schedule = self.policy.schedule
        if attempt >= len(schedule):
            return None
        j = self.policy.jitter
        return schedule[attempt] * self.rng.uniform(1 - j, 1 + j)

    def record(self, results: list[tuple[Claimed, Outcome]]) -> None:
        """Write the outcomes of attempts, in one transaction. An outcome whose
        lease has run out (another dispatcher has the delivery now) is dropped."""
        now = self.clock()
        successes: list[dict[str, Any]] = []
        given_up: list[tuple[str, str]] = []
        with self.db.write() as conn:
            for claimed, outcome in results:
                values = self._attempt(claimed, outcome)
                if outcome.ok:
                    successes.append({**values, "id": claimed.id, "token": claimed.token})
                elif self._failed(conn, claimed, outcome, values, now):
                    given_up.append((claimed.endpoint_id, claimed.message_id))
            delivered = store.record_successes(conn, self.db.backend, successes, now)
            # Without a lock, and once a second: not every success writes it.
            due = {ep for ep, _ in delivered if self._noted.get(ep, MIN_TIME) <= now - NOTE_EVERY}
            store.note_delivered(conn, due, now, NOTE_EVERY)
            # The next delivery of each of their images may go now.
            store.release_after(conn, self.db.backend, delivered | set(given_up), now)
        self._noted.update(dict.fromkeys(due, now))
        for claimed, outcome in results:
            if not outcome.ok:  # a failure may have marked it failing: note the next success
                self._noted.pop(claimed.endpoint_id, None)

    def release_stranded(self) -> int:
        """Make due what still waits behind a delivery that is no longer
        pending (made while that one finished); how many. Reads first: a
        write transaction only when there is something to release."""
        with self.db.read() as conn:
            ids = store.stranded(conn)
        if ids:
            with self.db.write() as conn:
                store.release(conn, ids, self.clock())
        return len(ids)

    @staticmethod
    def _attempt(claimed: Claimed, outcome: Outcome) -> dict[str, Any]:
        return {
            "attempts": claimed.attempts + 1,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "last_latency_ms": round(outcome.latency_ms, 3),
            "last_response": (outcome.response or "")[:RESPONSE_KEPT] or None,
        }

    def _failed(
        self, conn: Any, claimed: Claimed, outcome: Outcome, values: dict[str, Any], now: datetime
    ) -> bool:
        """Record a failed attempt; whether the delivery is given up (`failed`)."""
        endpoint_values: dict[str, Any] = {}
        if outcome.status_code == 410:
            values.update(status=store.FAILED, next_attempt_at=None)
            endpoint_values = {
                "state": store.DISABLED,
                "disabled_reason": "the receiver answered 410 Gone",
                "updated_at": now,
            }
        else:
            wait = self._wait(values["attempts"])
            if wait is not None and outcome.retry_after is not None:
                wait = max(wait, outcome.retry_after)
            if wait is None:
                values.update(status=store.FAILED, next_attempt_at=None)
            else:
                values["next_attempt_at"] = now + timedelta(seconds=wait)
        if not store.record(conn, claimed.id, claimed.token, values):
            return False  # the lease ran out and another dispatcher has it now
        given_up = values.get("status") == store.FAILED
        ep = store.endpoint(conn, claimed.endpoint_id, lock=True)
        if ep is None:
            return given_up
        if outcome.status_code != 410:
            since = ep.failing_since or now
            endpoint_values["failing_since"] = since
            quiet_since = max(since, ep.last_delivered_at or since)
            if (now - quiet_since).total_seconds() >= self.policy.disable_after_seconds:
                endpoint_values.update(
                    state=store.DISABLED,
                    disabled_reason="nothing delivered while deliveries kept failing",
                    updated_at=now,
                )
        store.change_endpoint(conn, claimed.endpoint_id, endpoint_values)
        return given_up

    def pending(self) -> list[tuple[str, int, float]]:
        """Per endpoint: pending deliveries and the age in seconds of the oldest."""
        now = self.clock()
        with self.db.read() as conn:
            rows = store.pending_counts(conn)
        return [(ep, int(n), (now - oldest).total_seconds()) for ep, n, oldest in rows]
