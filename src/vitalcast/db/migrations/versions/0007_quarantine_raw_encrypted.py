"""Quarantine raw items encrypted at rest; source versions of patients, stays, observations

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 17:00:00

A quarantined item keeps the raw input for review, and raw input may hold direct
identifiers (an HL7 PID segment, a FHIR Patient, a CSV row with a name or an MRN), so it
is encrypted like ``patients.identifiers_enc`` (HIPAA 164.312(a)(2)(iv)): AES-256-GCM
with the key id beside the ciphertext, the associated data binding it to its row
(``quarantine:<run_id>:<location>``), the payload ``{"raw": <text>}``.

``source_version`` (nullable) on patients, encounters and observations holds the sortable
version of the source record (FHIR ``meta.versionId``/``lastUpdated``, an HL7 ADT's
MSH-7), so that a newer version replaces the stored row and an older one does not.

Existing rows are encrypted in place, in batches, with the field cipher handed to
:func:`vitalcast.db.session.upgrade_database` (or, failing that, the one of the
configured settings); the upgrade stops with a message, changing nothing, when rows need
encrypting and no key is configured. The downgrade decrypts them back the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_VERSIONED = ("patients", "encounters", "observations")


def _context(run_id: int | None, location: str) -> str:
    # Frozen copy of vitalcast.ingest.tables.raw_context at this revision.
    return f"quarantine:{run_id if run_id is not None else ''}:{location}"


def _cipher(rows: int) -> Any:
    cipher = context.config.attributes.get("field_cipher")
    if cipher is not None:
        return cipher
    from vitalcast.config import load_settings
    from vitalcast.errors import ConfigError
    from vitalcast.security.crypto import cipher_from_settings

    try:
        return cipher_from_settings(load_settings())
    except ConfigError as exc:
        raise RuntimeError(
            f"migration 0007 must encrypt or decrypt {rows} quarantined raw items but has no key:"
            f" {exc}. Set VITALCAST_FIELD_KEY and VITALCAST_HMAC_KEY and run it again"
            " (nothing was changed)."
        ) from None


def _table() -> sa.TableClause:
    return sa.table(
        "quarantine",
        sa.column("id", sa.BigInteger()),
        sa.column("run_id", sa.Integer()),
        sa.column("location", sa.String()),
        sa.column("raw", sa.Text()),
        sa.column("raw_enc", sa.LargeBinary()),
        sa.column("key_id", sa.String()),
    )


def upgrade() -> None:
    bind = op.get_bind()
    q = _table()
    todo = bind.scalar(sa.select(sa.func.count()).select_from(q).where(q.c.raw.is_not(None)))
    # Find the key before altering anything: SQLite does not roll DDL back.
    cipher = _cipher(int(todo)) if todo else None
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw_enc", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))
    if cipher is not None:
        last = 0
        while True:
            rows = bind.execute(
                sa.select(q.c.id, q.c.run_id, q.c.location, q.c.raw)
                .where(q.c.raw.is_not(None), q.c.id > last)
                .order_by(q.c.id)
                .limit(_BATCH)
            ).all()
            if not rows:
                break
            for row_id, run_id, location, raw in rows:
                blob, key_id = cipher.encrypt({"raw": raw}, context=_context(run_id, location))
                bind.execute(
                    q.update().where(q.c.id == row_id).values(raw_enc=blob, key_id=key_id, raw=None)
                )
            last = rows[-1][0]
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_column("raw")
    for table in _VERSIONED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("source_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in _VERSIONED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("source_version")
    bind = op.get_bind()
    q = _table()
    todo = bind.scalar(sa.select(sa.func.count()).select_from(q).where(q.c.raw_enc.is_not(None)))
    cipher = _cipher(int(todo)) if todo else None
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw", sa.Text(), nullable=True))
    if cipher is not None:
        last = 0
        while True:
            rows = bind.execute(
                sa.select(q.c.id, q.c.run_id, q.c.location, q.c.raw_enc, q.c.key_id)
                .where(q.c.raw_enc.is_not(None), q.c.id > last)
                .order_by(q.c.id)
                .limit(_BATCH)
            ).all()
            if not rows:
                break
            for row_id, run_id, location, blob, key_id in rows:
                raw = cipher.decrypt(blob, key_id or "", context=_context(run_id, location))
                bind.execute(q.update().where(q.c.id == row_id).values(raw=raw["raw"]))
            last = rows[-1][0]
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_column("key_id")
        batch_op.drop_column("raw_enc")
