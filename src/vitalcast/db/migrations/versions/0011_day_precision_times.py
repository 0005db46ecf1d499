"""Day-precision onsets and study starts: conditions.onset_on, imaging_studies.started_on

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:00:00

A FHIR dateTime may be a date alone (``"onsetDateTime": "2019-03-04"``). Until now such
an onset or study start was dropped without a trace: the resource was stored with no
time. It is now kept as a ``date`` next to the exact-time column (one of the two is set,
never both), and a point-in-time rule takes it as known only once that day is over
everywhere (``vitalcast.clinical.times.known_from``). Rows stored before keep their
NULL: the dropped dates were never stored, so re-import the source to recover them.

Downgrading drops the two columns only when no row holds a date in them; otherwise it
stops and says how many, rather than lose those dates again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("conditions", "onset_on"), ("imaging_studies", "started_on"))


def upgrade() -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column(column, sa.Date(), nullable=True))


def downgrade() -> None:
    bind = op.get_bind()
    for table, column in _COLUMNS:
        held = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL")
        ).scalar_one()
        if held:
            raise RuntimeError(
                f"cannot downgrade: {held} rows of {table} hold a day-precision date in"
                f" {column}, which the older schema cannot store"
            )
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column(column)
