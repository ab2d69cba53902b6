"""partner_schedules: drop last_sent_local_date

The planner wrote each schedule's last local send day and nothing ever read it: "one step per partner
per local day" is decided from the nudges themselves. The code that stops writing it ships with this
migration. A scheduler of the previous release still running while it applies fails its passes (each
rolls back whole, losing nothing) until it is replaced, and the new one plans what they did not.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Dropping a column needs a moment's exclusive lock: wait for it at most a few seconds rather than
    # queue every planner and sender read behind a long transaction. A timeout fails the release; rerun it.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_column("partner_schedules", "last_sent_local_date")


def downgrade() -> None:
    # The dropped values are gone; the column comes back empty, and the previous release refills it.
    op.add_column("partner_schedules", sa.Column("last_sent_local_date", sa.Date(), nullable=True))
