"""Audit chain keyed with HMAC-SHA-256: format version and key id on every row

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 10:00:00

A plain SHA-256 chain can be rewritten and re-hashed by anyone who can write to the
database. From this revision on, rows are HMAC-SHA-256 under a key held only in the
environment (``VITALCAST_AUDIT_KEY``); each row records how its hash was made
(``chain_version``: 1 plain SHA-256, 2 HMAC) and, when keyed, the id of its key
(``key_id``), so that rows written before keep verifying and keys can rotate.

Existing rows become format 1 through the column default; adding a column with a
constant default rewrites no row, so migration 0005's append-only trigger is not
involved. On PostgreSQL the default is then dropped: an application older than this
revision still running against the upgraded database (a rolling deployment) cannot
append unkeyed rows after keyed ones, its audit writes fail instead (stop it before
upgrading). SQLite (the single-process demo) keeps the default: dropping it would
rebuild the table and its triggers.

Downgrading drops both columns: rows written keyed can then no longer be verified,
by the older code or after upgrading again. Anchor (``vitalcast audit anchor``) and
export (``vitalcast audit export``) the trail first. The SQL is written out here, not
imported, so the revision stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: batch mode would rebuild the SQLite table and lose
    # its append-only triggers.
    op.add_column(
        "audit_events",
        sa.Column("chain_version", sa.SmallInteger(), nullable=False, server_default="1"),
    )
    op.add_column("audit_events", sa.Column("key_id", sa.String(length=16), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("audit_events", "chain_version", server_default=None)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("audit_events", "key_id")
        op.drop_column("audit_events", "chain_version")
    else:
        # SQLite 3.35+ drops a column in place (batch mode would lose the triggers).
        op.execute("ALTER TABLE audit_events DROP COLUMN key_id")
        op.execute("ALTER TABLE audit_events DROP COLUMN chain_version")
