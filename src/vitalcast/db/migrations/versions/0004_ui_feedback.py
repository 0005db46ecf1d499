"""clinician feedback on risk scores (acknowledge, agree, disagree)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 13:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("encounter_id", sa.Integer(), nullable=True),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("score_shown_permille", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["encounter_id"], ["encounters.id"], name=op.f("fk_ui_feedback_encounter_id_encounters")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_ui_feedback_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_ui_feedback_prediction_id_predictions"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_ui_feedback_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_feedback")),
    )
    with op.batch_alter_table("ui_feedback", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ui_feedback_encounter_time", ["encounter_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ui_feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_ui_feedback_encounter_time")
    op.drop_table("ui_feedback")
