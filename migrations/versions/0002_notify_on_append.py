"""NOTIFY vidledger_events on every append (PostgreSQL), to wake workers and feeds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION video_status_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vidledger_events', NEW.to_status);
    RETURN NULL;
END;
$$
"""
TRIGGER = """
CREATE TRIGGER video_status_events_notify
AFTER INSERT ON video_status_events
FOR EACH ROW EXECUTE FUNCTION video_status_events_notify()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)
        op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER video_status_events_notify ON video_status_events")
        op.execute("DROP FUNCTION video_status_events_notify()")
