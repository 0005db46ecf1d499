"""Index of the patients listed by audit events (PostgreSQL)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 15:00:00

A patient's audit trail includes the listing events that name them in
``details.patients`` (``patient.list``: a ward page; ``ingest.batch``: a bulk import;
:func:`vitalcast.security.audit.about_patient`). Without an index every such event of the
time range was read and its JSON parsed: 0.65 s for a trail among 200,000 ward-page
events, growing with the log. A GIN index (``jsonb_path_ops``: containment only, the one
operator the trail query uses) on that list, partial to the listing events, finds them
directly. SQLite (the embedded demo) has no such index and keeps the scan.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_audit_events_listed_patients"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"CREATE INDEX {INDEX} ON audit_events"
        " USING gin ((CAST(details AS JSONB) -> 'patients') jsonb_path_ops)"
        " WHERE event IN ('patient.list', 'ingest.batch')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
