"""Webhook deliveries wait behind the one before them, by name.

Each delivery records the `message_id` of the one before it of the same
endpoint and image (`after_message_id`). One that must wait (that one is
still pending) has no `next_attempt_at` until that one is given up or
succeeds. A claim then walks the due index in order and stops at its limit,
instead of ranking every pending delivery on every claim. Deliveries made
before this revision get theirs from what is there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")
WAITING = sa.text("status = 'pending' AND next_attempt_at IS NULL")


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("after_message_id", sa.String(64)))
    op.execute(
        """
        UPDATE webhook_deliveries SET after_message_id = (
            SELECT p.message_id FROM webhook_deliveries p
            WHERE p.endpoint_id = webhook_deliveries.endpoint_id
              AND p.img_name = webhook_deliveries.img_name
              AND p.id < webhook_deliveries.id
            ORDER BY p.id DESC LIMIT 1
        )
        WHERE img_name IS NOT NULL
        """
    )
    op.execute(
        """
        UPDATE webhook_deliveries SET next_attempt_at = NULL
        WHERE status = 'pending' AND EXISTS (
            SELECT 1 FROM webhook_deliveries p
            WHERE p.endpoint_id = webhook_deliveries.endpoint_id
              AND p.message_id = webhook_deliveries.after_message_id
              AND p.status = 'pending'
        )
        """
    )
    op.drop_index("ix_webhook_deliveries_status_next_attempt_at", "webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_webhook_deliveries_waiting",
        "webhook_deliveries",
        ["endpoint_id", "after_message_id"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_waiting", "webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", "webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = created_at"
        " WHERE status = 'pending' AND next_attempt_at IS NULL"
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("after_message_id")
