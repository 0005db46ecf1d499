"""Codes up to 64 characters in observations, conditions and quarantine

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 16:30:00

A code column of 32 characters held every LOINC, SNOMED CT and ICD code, but not the
36-character concept UUIDs (OpenMRS/CIEL style) that real FHIR exports carry in
``Observation.code`` and ``Condition.code``: the Synthea HIV sample has tens of thousands
of them, and its tuberculosis conditions were quarantined as ``too_long``. FHIR puts no
length limit on a code; 64 holds a UUID with room for a prefix. On PostgreSQL, widening a
``varchar`` rewrites no rows.

Downgrading narrows the columns again only when no stored code is longer than 32
characters; otherwise it stops and says which table holds how many, rather than cutting
codes (a cut code names another concept).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("observations", False), ("conditions", False), ("quarantine", True))


def upgrade() -> None:
    for table, nullable in _COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column(
                "code",
                existing_type=sa.String(length=32),
                type_=sa.String(length=64),
                existing_nullable=nullable,
            )


def downgrade() -> None:
    bind = op.get_bind()
    for table, _ in _COLUMNS:
        longer = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE length(code) > 32")
        ).scalar_one()
        if longer:
            raise RuntimeError(
                f"cannot downgrade below 0009: {table} holds {longer} codes longer than"
                " 32 characters; remove or re-code them first"
            )
    for table, nullable in _COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column(
                "code",
                existing_type=sa.String(length=64),
                type_=sa.String(length=32),
                existing_nullable=nullable,
            )
