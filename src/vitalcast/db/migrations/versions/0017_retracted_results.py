"""Results taken back by their source, kept so that they are not stored again

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 10:00:00

A retraction (HL7 OBX-11 ``W``/``D``/``X``, FHIR ``entered-in-error``/``cancelled``)
deleted the stored result, but nothing remembered it: the same result sent again, or
arriving after its retraction, was stored and scored. ``retracted_results`` keeps the
newest retraction's version per (patient, source identity); ingestion quarantines a
result whose version is not newer than it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retracted_results",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("dedup_key", sa.Uuid(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_retracted_results_patient_id_patients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retracted_results")),
        sa.UniqueConstraint(
            "patient_id", "dedup_key", name=op.f("uq_retracted_results_patient_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("retracted_results")
