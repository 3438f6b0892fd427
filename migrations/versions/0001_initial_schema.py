"""Initial schema: the log, the status projection, leases, keys, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.types import IdType, JsonType, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The log is append-only: PostgreSQL refuses UPDATE and DELETE on it.
APPEND_ONLY_FUNCTION = """
CREATE FUNCTION video_status_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'video_status_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER video_status_events_append_only
BEFORE UPDATE OR DELETE ON video_status_events
FOR EACH ROW EXECUTE FUNCTION video_status_events_append_only()
"""


def upgrade() -> None:
    op.create_table(
        "video_status_events",
        sa.Column("position", IdType, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("img_name", sa.String(500), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("data", JsonType, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(200), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("position", name="pk_video_status_events"),
        sa.UniqueConstraint("event_id", name="uq_video_status_events_event_id"),
        sa.UniqueConstraint("img_name", "version", name="uq_video_status_events_img_name_version"),
    )
    op.create_index(
        "ix_video_status_events_tx_id_position", "video_status_events", ["tx_id", "position"]
    )

    op.create_table(
        "image_video_status",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("img_name", sa.String(500), nullable=False),
        sa.Column("has_video", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("video_status", sa.String(16), server_default=sa.text("'none'"), nullable=False),
        sa.Column("video_filename", sa.String(600), nullable=True),
        sa.Column("source_type", sa.String(20), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("params", JsonType, nullable=True),
        sa.Column("generation", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_retryable", sa.Boolean(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=True),
        sa.Column("requested_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_image_video_status"),
        sa.UniqueConstraint("img_name", name="uq_image_video_status_img_name"),
    )
    op.create_index(
        "ix_image_video_status_video_status_not_before_requested_at",
        "image_video_status",
        ["video_status", "not_before", "requested_at"],
    )
    op.create_index(
        "ix_image_video_status_source_type_video_status",
        "image_video_status",
        ["source_type", "video_status"],
    )
    op.create_index("ix_image_video_status_updated_at", "image_video_status", ["updated_at"])

    state = op.create_table(
        "projection_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_position", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("built_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_projection_state"),
    )
    # A new database's empty table is trivially built at version 1.
    op.bulk_insert(
        state, [{"name": "image_video_status", "version": 1, "state": "ok", "last_position": 0}]
    )

    op.create_table(
        "video_task_leases",
        sa.Column("img_name", sa.String(500), nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("lease_seconds", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("img_name", name="pk_video_task_leases"),
    )
    op.create_index("ix_video_task_leases_expires_at", "video_task_leases", ["expires_at"])

    op.create_table(
        "api_keys",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("img_name", sa.String(500), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", JsonType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("img_name", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(APPEND_ONLY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER video_status_events_append_only ON video_status_events")
        op.execute("DROP FUNCTION video_status_events_append_only()")
    op.drop_table("idempotency_keys")
    op.drop_table("api_keys")
    op.drop_table("video_task_leases")
    op.drop_table("projection_state")
    op.drop_table("image_video_status")
    op.drop_table("video_status_events")
