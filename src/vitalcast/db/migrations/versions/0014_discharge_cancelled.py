"""Cancelled discharges: encounters.discharge_cancelled_version

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 15:00:00

An HL7 ADT^A13 (cancel discharge) newer than the A03 that discharged a stay reopens it:
the stay is in fact still in progress. An A03 older than the stored version still fills
a missing discharge time (messages can arrive out of order), so without a record of the
cancellation the same old A03 resent, or its file imported again, would discharge the
reopened stay once more. The A13's version is kept here; a discharge no newer than it
changes nothing.

Downgrading drops the column: reopened stays stay in progress, but an old A03 arriving
again could then discharge them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("encounters") as batch_op:
        batch_op.add_column(
            sa.Column("discharge_cancelled_version", sa.String(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("encounters") as batch_op:
        batch_op.drop_column("discharge_cancelled_version")
