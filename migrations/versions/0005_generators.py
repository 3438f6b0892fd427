"""Named generators: the status row names its generator, and the queue is keyed by it.

`generator` is the generator of the current generation (VideoRequested v3).
Rows of images requested before are the built-in `kenburns`'s. A claim
that names its generators probes the new index once per generator, in due
order, instead of filtering the whole queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "image_video_status"
INDEX = f"ix_{TABLE}_queue_by_generator"


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("generator", sa.String(40)))
    op.execute(f"UPDATE {TABLE} SET generator = 'kenburns' WHERE generation > 0")
    op.create_index(INDEX, TABLE, ["video_status", "generator", "not_before", "requested_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("generator")
    # The table no longer holds what projection v3 wrote: mark it for a rebuild.
    op.execute("UPDATE projection_state SET version = 2 WHERE name = 'image_video_status'")
