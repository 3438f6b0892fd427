"""image_video_status gains queued_seconds and generation_seconds (projection v2).

No data migration: the values of existing rows come only from replaying the
log. `vidledger db upgrade` sees the projection's stored version (1) differ
from the code's (2) and rebuilds it online after this revision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image_video_status") as batch:
        batch.add_column(sa.Column("queued_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("generation_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_video_status") as batch:
        batch.drop_column("generation_seconds")
        batch.drop_column("queued_seconds")
    # The table no longer holds what projection v2 wrote: mark it for a rebuild.
    op.execute("UPDATE projection_state SET version = 1 WHERE name = 'image_video_status'")
