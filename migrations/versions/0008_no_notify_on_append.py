"""No NOTIFY on every append (PostgreSQL): sleepers poll a cheap probe instead.

A NOTIFY makes its transaction take, at commit, a lock that every notifying
commit queues on: a per-row trigger held back about 30% of the append rate at
8 connections. Listeners in other processes now poll the log's newest
position and the snapshot's xmin every 0.1 s (`app/db/postgres/notify.py`);
in-process sleepers are still woken by the append itself.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
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
        op.execute("DROP TRIGGER IF EXISTS video_status_events_notify ON video_status_events")
        op.execute("DROP FUNCTION IF EXISTS video_status_events_notify()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)
        op.execute(TRIGGER)
