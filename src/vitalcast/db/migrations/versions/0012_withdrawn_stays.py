"""Withdrawn stays: encounters.withdrawn_at and withdrawn_reason

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 11:00:00

A later version of a FHIR Encounter with status entered-in-error or cancelled says the
stay never was one. It was quarantined, and the stay already stored stayed in progress:
on the ward, rescored, shown to clinicians. It now withdraws the stored stay: the time
and reason are recorded here, every query for stays in progress excludes it, and its
data and history are kept.

Downgrading drops both columns only when no stay is withdrawn; otherwise it stops and
says how many, since the older code would put those stays back on the ward.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("encounters") as batch_op:
        batch_op.add_column(sa.Column("withdrawn_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    withdrawn = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM encounters WHERE withdrawn_at IS NOT NULL"))
        .scalar_one()
    )
    if withdrawn:
        raise RuntimeError(
            f"cannot downgrade below 0012: {withdrawn} stays are withdrawn, and the older"
            " schema would show them as in progress again"
        )
    with op.batch_alter_table("encounters") as batch_op:
        batch_op.drop_column("withdrawn_reason")
        batch_op.drop_column("withdrawn_at")
