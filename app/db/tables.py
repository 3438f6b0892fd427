"""Every table, in one MetaData. Migrations are checked against it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)

from app.db.types import IdType, JsonType, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

IMG_NAME = String(500)
GENERATOR_NAME = String(40)

#: The append-only log . Rows are never updated or deleted.
events = Table(
    "video_status_events",
    metadata,
    Column("position", IdType, primary_key=True, autoincrement=True),
    Column("event_id", Uuid, nullable=False),
    Column("img_name", IMG_NAME, nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("data", JsonType, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text),
    Column("correlation_id", String(200)),
    Column("idempotency_key", String(255)),
    Column("recorded_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("tx_id", BigInteger),
    UniqueConstraint("event_id"),
    UniqueConstraint("img_name", "version"),
    Index(None, "tx_id", "position"),
)


def status_columns() -> list[Column[object]]:
    """The projection's columns, shared by the live table and rebuild shadows."""
    return [
        Column("id", IdType, primary_key=True, autoincrement=True),
        Column("img_name", IMG_NAME, nullable=False),
        Column("has_video", Boolean, nullable=False, server_default=false()),
        Column("video_status", String(16), nullable=False, server_default=text("'none'")),
        Column("video_filename", String(600)),
        Column("source_type", String(20)),
        Column("prompt", Text),
        Column("params", JsonType),
        Column("generation", Integer, nullable=False, server_default=text("0")),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("error_code", String(100)),
        Column("error_message", Text),
        Column("error_retryable", Boolean),
        Column("cancel_requested", Boolean, nullable=False, server_default=false()),
        Column("not_before", UTCDateTime),
        Column("requested_at", UTCDateTime),
        Column("started_at", UTCDateTime),
        Column("completed_at", UTCDateTime),
        Column("updated_at", UTCDateTime),
        Column("version", Integer, nullable=False),
        Column("last_position", BigInteger, nullable=False),
        Column("queued_seconds", Float),
        Column("generation_seconds", Float),
        Column("generator", GENERATOR_NAME),
    ]


STATUS_TABLE = "image_video_status"
#: The projection's indexes: the worker's queue, listings, and newest-first.
STATUS_INDEXES = {
    "video_status_not_before_requested_at": ("video_status", "not_before", "requested_at"),
    # The queue of one generator: a claim naming its generators probes each.
    "queue_by_generator": (
        "video_status",
        "generator",
        "not_before",
        "requested_at",
    ),
    # Listings, newest first, unfiltered / by status / by source type and status.
    "updated_at": ("updated_at",),
    "video_status_updated_at": ("video_status", "updated_at", "id"),
    "source_type_video_status_updated_at": ("source_type", "video_status", "updated_at", "id"),
}


def status_table(
    name: str, meta: MetaData, *, names_of: str = STATUS_TABLE, suffix_constraints: bool = True
) -> Table:
    """The status projection's table under `name`.

    Indexes (and, where their names must be unique, constraints) are named
    as for `names_of` plus whatever makes `name` differ, so a rebuild's
    shadow can be renamed into place and end up exactly like a migrated
    table.
    """
    suffix = name.removeprefix(names_of)
    csuffix = suffix if suffix_constraints else ""
    return Table(
        name,
        meta,
        *status_columns(),
        PrimaryKeyConstraint("id", name=f"pk_{names_of}{csuffix}"),
        UniqueConstraint("img_name", name=f"uq_{names_of}_img_name{csuffix}"),
        *[Index(f"ix_{names_of}_{label}{suffix}", *cols) for label, cols in STATUS_INDEXES.items()],
    )


#: The current-status projection : one row per image with events.
image_status = status_table(STATUS_TABLE, metadata)

#: Each projection's version and build record.
projection_state = Table(
    "projection_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("last_position", BigInteger, nullable=False, server_default=text("0")),
    Column("built_at", UTCDateTime),
)

#: Operational lease data of tasks being processed; not history, never rebuilt.
leases = Table(
    "video_task_leases",
    metadata,
    Column("img_name", IMG_NAME, primary_key=True),
    Column("lease_token", String(64), nullable=False),
    Column("worker_id", String(200), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime),
    Column("lease_seconds", Integer, nullable=False),
    Column("progress", Float),
    Index(None, "expires_at"),
)

#: API keys, stored as a SHA-256 of the secret; the secret is never kept.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    UniqueConstraint("name"),
    UniqueConstraint("prefix"),
)

#: Answers to writes sent with an Idempotency-Key, per image.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("img_name", IMG_NAME, nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    # The caller's answer (an HTTP status); `answer_status` in code, whatever
    # the edge stores there. The column keeps its name: the schema is fixed.
    Column("status_code", SmallInteger, nullable=False, key="answer_status"),
    Column("response", JsonType, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("img_name", "key"),
    Index(None, "created_at"),
)

#: Webhook endpoints (admin): where events are posted, what of them, and the
#: secrets that sign them. `feed_cursor` is how far its fan-out has read the log.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("url", Text, nullable=False),
    Column("description", Text),
    Column("event_types", JsonType),
    Column("source_types", JsonType),
    Column("state", String(16), nullable=False),
    Column("disabled_reason", Text),
    Column("secret", String(100), nullable=False),
    Column("previous_secret", String(100)),
    Column("previous_secret_until", UTCDateTime),
    Column("feed_cursor", String(100)),
    Column("last_delivered_at", UTCDateTime),
    Column("failing_since", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: One event (or test message) for one endpoint, with the exact body it is
#: sent with, its attempts so far and, while a dispatcher holds it, a lease.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(40), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("img_name", IMG_NAME),
    Column("event_cursor", String(100)),
    #: The delivery (by message) of the same endpoint and image before this one.
    #: While that one is pending, this one waits, with no `next_attempt_at`.
    Column("after_message_id", String(64)),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime),
    Column("lease_token", String(64)),
    Column("lease_until", UTCDateTime),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("last_latency_ms", Float),
    Column("last_response", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("endpoint_id", "message_id"),
    # What is due, in order; and what waits behind a delivery, to release it.
    # Partial: a claim's plan must hold on a young table without statistics.
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_webhook_deliveries_waiting",
        "endpoint_id",
        "after_message_id",
        postgresql_where=text("status = 'pending' AND next_attempt_at IS NULL"),
        sqlite_where=text("status = 'pending' AND next_attempt_at IS NULL"),
    ),
    Index(None, "endpoint_id", "img_name", "status", "id"),
    Index(None, "endpoint_id", "status", "id"),
)
