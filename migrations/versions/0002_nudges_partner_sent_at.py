"""nudges: index (partner_id, sent_at) replaces (partner_id)

A reply's prompt lookup (the latest prompt sent to one partner within the reply window) used the
sent_at index and filtered every partner's recent sends; with sent_at beside partner_id it reads one
entry. The new index also serves every lookup the old one did, so the old one goes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 03:55:00
"""
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: building it on a live nudges table must not block the senders' writes. A concurrent
    # build that failed leaves an INVALID index behind; dropping any first makes a rerun build it anew.
    with op.get_context().autocommit_block():
        op.drop_index("ix_nudges_partner_id_sent_at", table_name="nudges", postgresql_concurrently=True,
                      if_exists=True)
        op.create_index("ix_nudges_partner_id_sent_at", "nudges", ["partner_id", "sent_at"],
                        postgresql_concurrently=True)
        op.drop_index("ix_nudges_partner_id", table_name="nudges", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_nudges_partner_id", table_name="nudges", postgresql_concurrently=True, if_exists=True)
        op.create_index("ix_nudges_partner_id", "nudges", ["partner_id"], postgresql_concurrently=True)
        op.drop_index("ix_nudges_partner_id_sent_at", table_name="nudges", postgresql_concurrently=True,
                      if_exists=True)
