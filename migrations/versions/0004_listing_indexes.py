"""Listings by status (and by source type and status) read an index in order.

`GET /v1/videos?status=…` pages newest first. With only an `updated_at`
index, PostgreSQL walked it and filtered, reading about 1/frequency rows per
row returned (5,000 for a page of 50 of a 1% status, at 1,000,000 images).
The `(source_type, video_status)` index is widened to serve both the counts
by source type and the listing by source type and status.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "image_video_status"


def upgrade() -> None:
    op.create_index(
        f"ix_{TABLE}_video_status_updated_at", TABLE, ["video_status", "updated_at", "id"]
    )
    op.create_index(
        f"ix_{TABLE}_source_type_video_status_updated_at",
        TABLE,
        ["source_type", "video_status", "updated_at", "id"],
    )
    op.drop_index(f"ix_{TABLE}_source_type_video_status", table_name=TABLE)


def downgrade() -> None:
    op.create_index(f"ix_{TABLE}_source_type_video_status", TABLE, ["source_type", "video_status"])
    op.drop_index(f"ix_{TABLE}_source_type_video_status_updated_at", table_name=TABLE)
    op.drop_index(f"ix_{TABLE}_video_status_updated_at", table_name=TABLE)
