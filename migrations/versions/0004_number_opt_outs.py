"""number_opt_outs: a STOP from a number no partner has is kept, as a keyed hash of the number

Consent is about the number, not the couple: an unknown number that texted STOP was answered and
forgotten, so a later signup that invited it texted it. The new table keeps, per number, an HMAC-SHA256
of the E.164 number (keyed from SECRET_KEY, so no number is stored in clear), when it opted out and the
STOP's MessageSid; START from that number removes the row. A new, empty table: no lock on anything live.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 02:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "number_opt_outs",
        sa.Column("number_hash", sa.String(length=64), nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_detail", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("number_hash", name=op.f("pk_number_opt_outs")),
    )


def downgrade() -> None:
    # The opt-outs of numbers no partner has are lost; the previous release does not read them.
    op.drop_table("number_opt_outs")
