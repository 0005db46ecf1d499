"""CDS client JWTs already used (replay protection)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 10:00:00

CDS Hooks requires of the EHR's JWT a ``jti``, "a nonce string value that uniquely
identifies this authentication JWT (used to protect against replay attacks)"; it was
checked to be present and then forgotten, so a captured token could be replayed until it
expired. ``cds_jwt_uses`` holds one row per accepted token, ``(issuer, jti)`` unique, until
the token's ``exp`` (plus the clock leeway): the insert is the check, atomic across
workers. Expired rows are deleted a few at a time as new tokens arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cds_jwt_uses",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("issuer", sa.String(length=2048), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_jwt_uses")),
        sa.UniqueConstraint("issuer", "jti", name=op.f("uq_cds_jwt_uses_issuer")),
    )
    with op.batch_alter_table("cds_jwt_uses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cds_jwt_uses_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("cds_jwt_uses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cds_jwt_uses_expires_at"))
    op.drop_table("cds_jwt_uses")
