"""Observations: a 16-byte dedup key unique per patient, and no foreign keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 16:55:00

Bulk ingest spent most of its database time on three things per row: a share lock on the
parent patient and encounter rows for each foreign-key check, and an insert into a unique
index of random 40-character text keys. This revision drops both foreign keys (the
ingestion service resolves every reference in the same transaction and patients are never
deleted; ``vitalcast db check`` reports orphans) and turns the key into a ``uuid`` (the
first 128 bits of the same SHA-256) unique together with ``patient_id``, so that a batch
written patient by patient touches few index pages. Existing keys are truncated to their
first 32 hex digits, which is exactly what the new code computes for the same record.

Downgrading restores the text column and the foreign keys, but the keys stay 32 digits
long: records stored before the downgrade would not be recognised as duplicates by the
older code's 40-digit keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if not postgres:
        op.execute("UPDATE observations SET dedup_key = substr(dedup_key, 1, 32)")
    with op.batch_alter_table("observations") as batch_op:
        batch_op.drop_constraint("fk_observations_patient_id_patients", type_="foreignkey")
        batch_op.drop_constraint("fk_observations_encounter_id_encounters", type_="foreignkey")
        batch_op.drop_constraint("uq_observations_dedup_key", type_="unique")
        batch_op.alter_column(
            "dedup_key",
            existing_type=sa.String(length=40),
            type_=sa.Uuid(),
            existing_nullable=False,
            postgresql_using="substr(dedup_key, 1, 32)::uuid",
        )
        batch_op.create_unique_constraint("uq_observations_patient_id", ["patient_id", "dedup_key"])


def downgrade() -> None:
    with op.batch_alter_table("observations") as batch_op:
        batch_op.drop_constraint("uq_observations_patient_id", type_="unique")
        batch_op.alter_column(
            "dedup_key",
            existing_type=sa.Uuid(),
            type_=sa.String(length=40),
            existing_nullable=False,
            postgresql_using="replace(dedup_key::text, '-', '')",
        )
        batch_op.create_unique_constraint("uq_observations_dedup_key", ["dedup_key"])
        batch_op.create_foreign_key(
            "fk_observations_patient_id_patients", "patients", ["patient_id"], ["id"]
        )
        batch_op.create_foreign_key(
            "fk_observations_encounter_id_encounters", "encounters", ["encounter_id"], ["id"]
        )
