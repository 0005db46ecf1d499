"""Encrypted direct identifiers: MRN lookup through the keyed hash, and key rotation.

``vitalcast keys rotate`` re-encrypts ``Patient.identifiers_enc`` under the keyring's
current key in small committed batches, without downtime: while it runs, readers decrypt
each row with the key named in its ``key_id`` (old and new keys are both in the keyring),
and each batch locks only its own rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL). Once
no row names the old key, remove it from ``VITALCAST_FIELD_KEY``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.tables import Patient
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)


def find_patient_by_mrn(session: Session, cipher: FieldCipher, mrn: str) -> Patient | None:
    """The patient with this MRN, found by its HMAC (the MRN is never stored in clear)."""
    return session.scalar(select(Patient).where(Patient.mrn_hmac == cipher.mrn_hash(mrn)))


def key_usage(session: Session) -> dict[str, int]:
    """How many patients' identifiers each key id encrypts."""
    rows = session.execute(
        select(Patient.key_id, func.count())
        .where(Patient.identifiers_enc.is_not(None))
        .group_by(Patient.key_id)
    ).all()
    return {str(key_id): int(n) for key_id, n in rows}


@dataclass(frozen=True)
class RotationReport:
    """Counts of one rotation run."""

    current_key: str
    rotated: int
    batches: int
    before: dict[str, int]
    after: dict[str, int]

    @property
    def remaining(self) -> int:
        """Rows still under another key (locked by a concurrent writer during the run)."""
        return sum(n for k, n in self.after.items() if k != self.current_key)


def rotate_identifiers(
    sessions: sessionmaker[Session],
    cipher: FieldCipher,
    *,
    batch_size: int = 500,
    actor: str = "cli",
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every identifier payload not under the current key; one commit per batch.

    Each batch also writes a ``keys.rotated`` audit event in its transaction, so the
    trail shows which rows moved and when, even if the run is interrupted.

    Raises:
        ValueError: a row names a key id that is not in the keyring (restore that key
            before rotating), or a ciphertext fails authentication.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with sessions() as session:
        before = key_usage(session)
    missing = sorted(set(before) - set(cipher.keys))
    if missing:
        raise ValueError(
            f"rows are encrypted under key ids not in VITALCAST_FIELD_KEY: {', '.join(missing)};"
            " add those keys (after the current one) and run again"
        )
    rotated = batches = 0
    while True:
        with sessions() as session, session.begin():
            query = (
                select(Patient)
                .where(
                    Patient.identifiers_enc.is_not(None),
                    or_(Patient.key_id.is_(None), Patient.key_id != cipher.current),
                )
                .order_by(Patient.id)
                .limit(batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            if not rows:
                break
            moved: Counter[str] = Counter()
            for row in rows:
                assert row.identifiers_enc is not None
                context = f"patient:{row.public_id}"
                payload = cipher.decrypt(row.identifiers_enc, row.key_id or "", context=context)
                moved[row.key_id or ""] += 1
                row.identifiers_enc, row.key_id = cipher.encrypt(payload, context=context)
            audit.record(
                session,
                audit.Event(
                    "keys.rotated",
                    "U",
                    actor=actor,
                    resource="Patient.identifiers_enc",
                    details={"to": cipher.current, "from": dict(moved), "rows": len(rows)},
                ),
            )
        rotated += len(rows)
        batches += 1
        if progress is not None:
            progress(rotated)
    with sessions() as session:
        after = key_usage(session)
    logger.info("identifier keys rotated", extra={"rows": rotated, "key_id": cipher.current})
    return RotationReport(cipher.current, rotated, batches, before, after)
