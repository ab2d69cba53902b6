"""partial indexes on nudges for columns that start out empty

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 02:30:00

A nudge is updated three or four times on its way out (queued, sending, sent, delivered), and each
update writes a new row version into every index whose predicate it meets. The sent/delivered time,
provider id and review-flag indexes only ever serve lookups of non-empty values, so they skip the
row versions where those are still empty.
"""
from alembic import op
import sqlalchemy as sa


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_nudges_sent_at_channel_kind": (["sent_at", "channel", "kind"], "sent_at IS NOT NULL", "sent_at IS NOT NULL"),
    "ix_nudges_delivered_at_channel": (["delivered_at", "channel"], "delivered_at IS NOT NULL",
                                       "delivered_at IS NOT NULL"),
    "ix_nudges_provider_message_id": (["provider_message_id"], "provider_message_id IS NOT NULL",
                                      "provider_message_id IS NOT NULL"),
    "ix_nudges_needs_review": (["needs_review"], "needs_review IS true", "needs_review IS 1"),
}


def upgrade() -> None:
    for name, (columns, pg_where, sqlite_where) in PARTIAL.items():
        op.drop_index(name, table_name="nudges")
        op.create_index(name, "nudges", columns, unique=False,
                        postgresql_where=sa.text(pg_where), sqlite_where=sa.text(sqlite_where))


def downgrade() -> None:
    for name, (columns, _pg_where, _sqlite_where) in PARTIAL.items():
        op.drop_index(name, table_name="nudges")
        op.create_index(name, "nudges", columns, unique=False)
