"""CDS Hooks feedback

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.String(length=100), nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("override_reason", sa.String(length=300), nullable=True),
        sa.Column("user_comment", sa.String(length=1000), nullable=True),
        sa.Column("outcome_at", sa.DateTime(), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_cds_feedback_prediction_id_predictions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_feedback")),
    )
    with op.batch_alter_table("cds_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cds_feedback_card_uuid"), ["card_uuid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cds_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cds_feedback_card_uuid"))
    op.drop_table("cds_feedback")
