"""Encrypted direct identifiers: MRN lookup through the keyed hash, and key rotation.

``vitalcast keys rotate`` re-encrypts ``Patient.identifiers_enc`` (then the quarantine's
raw items, ``QuarantineItem.raw_enc``, which may hold identifiers too) under the keyring's
current key in small committed batches, without downtime: while it runs, readers decrypt
each row with the key named in its ``key_id`` (old and new keys are both in the keyring),
and each batch locks only its own rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL). Once
no row names the old key, remove it from ``VITALCAST_FIELD_KEY``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.clinical.tables import Patient
from vitalcast.errors import ConfigError
from vitalcast.ingest.tables import QuarantineItem, raw_context
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)


def find_patient_by_mrn(session: Session, cipher: FieldCipher, mrn: str) -> Patient | None:
    """The patient with this MRN, found by its HMAC (the MRN is never stored in clear)."""
    return session.scalar(select(Patient).where(Patient.mrn_hmac == cipher.mrn_hash(mrn)))


def key_usage(session: Session) -> dict[str, int]:
    """How many patients' identifiers each key id encrypts."""
    return _usage(session, Patient, Patient.identifiers_enc)


def quarantine_key_usage(session: Session) -> dict[str, int]:
    """How many quarantined raw items each key id encrypts."""
    return _usage(session, QuarantineItem, QuarantineItem.raw_enc)


def _usage(session: Session, table: Any, blob: Any) -> dict[str, int]:
    rows = session.execute(
        select(table.key_id, func.count()).where(blob.is_not(None)).group_by(table.key_id)
    ).all()
    return {str(key_id): int(n) for key_id, n in rows}


@dataclass(frozen=True)
class RotationReport:
    """Counts of one rotation run (patients' identifiers and quarantined raw items)."""

    current_key: str
    rotated: int
    batches: int
    before: dict[str, int]
    after: dict[str, int]
    quarantine_rotated: int = 0
    quarantine_before: dict[str, int] = field(default_factory=dict)
    quarantine_after: dict[str, int] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        """Rows still under another key (locked by a concurrent writer during the run)."""
        return sum(
            n
            for usage in (self.after, self.quarantine_after)
            for k, n in usage.items()
            if k != self.current_key
        )


@dataclass(frozen=True)
class _Encrypted:
    """A table column of ciphertexts: how to find, decrypt and re-encrypt its rows."""

    table: Any
    blob: str  # attribute holding the ciphertext
    context: Callable[[Any], str]  # associated data of a row
    usage: Callable[[Session], dict[str, int]]
    name: str  # resource name in the audit trail


_PATIENTS = _Encrypted(
    Patient,
    "identifiers_enc",
    lambda r: f"patient:{r.public_id}",
    key_usage,
    "Patient.identifiers_enc",
)
_QUARANTINE = _Encrypted(
    QuarantineItem,
    "raw_enc",
    lambda r: raw_context(r.run_id, r.location),
    quarantine_key_usage,
    "QuarantineItem.raw_enc",
)


def rotate_identifiers(
    sessions: sessionmaker[Session],
    cipher: FieldCipher,
    *,
    batch_size: int = 500,
    actor: str = "cli",
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every ciphertext not under the current key; one commit per batch.

    Covers the patients' identifiers and the quarantine's raw items (which may hold
    identifiers too). Each batch also writes a ``keys.rotated`` audit event in its
    transaction, so the trail shows which rows moved and when, even if the run is
    interrupted. ``progress`` is called with the running count of patients.

    Raises:
        ValueError: a row names a key id that is not in the keyring (restore that key
            before rotating), or a ciphertext fails authentication.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with sessions() as session:
        before = key_usage(session)
        q_before = quarantine_key_usage(session)
    missing = sorted((set(before) | set(q_before)) - set(cipher.keys))
    if missing:
        raise ValueError(
            f"rows are encrypted under key ids not in VITALCAST_FIELD_KEY: {', '.join(missing)};"
            " add those keys (after the current one) and run again"
        )
    rotated, batches = _rotate(sessions, cipher, _PATIENTS, batch_size, actor, progress)
    q_rotated, _ = _rotate(sessions, cipher, _QUARANTINE, batch_size, actor, None)
    with sessions() as session:
        after = key_usage(session)
        q_after = quarantine_key_usage(session)
    logger.info(
        "identifier keys rotated",
        extra={"rows": rotated, "quarantine_rows": q_rotated, "key_id": cipher.current},
    )
    return RotationReport(
        cipher.current, rotated, batches, before, after, q_rotated, q_before, q_after
    )


def _rotate(
    sessions: sessionmaker[Session],
    cipher: FieldCipher,
    spec: _Encrypted,
    batch_size: int,
    actor: str,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Rotate one encrypted column in committed batches; returns (rows, batches)."""
    table = spec.table
    blob_col = getattr(table, spec.blob)
    rotated = batches = 0
    while True:
        with sessions() as session, session.begin():
            query = (
                select(table)
                .where(
                    blob_col.is_not(None),
                    or_(table.key_id.is_(None), table.key_id != cipher.current),
                )
                .order_by(table.id)
                .limit(batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            if not rows:
                break
            moved: Counter[str] = Counter()
            for row in rows:
                context = spec.context(row)
                payload = cipher.decrypt(getattr(row, spec.blob), row.key_id or "", context=context)
                moved[row.key_id or ""] += 1
                blob, row.key_id = cipher.encrypt(payload, context=context)
                setattr(row, spec.blob, blob)
            audit.record(
                session,
                audit.Event(
                    "keys.rotated",
                    "U",
                    actor=actor,
                    resource=spec.name,
                    details={"to": cipher.current, "from": dict(moved), "rows": len(rows)},
                ),
            )
        rotated += len(rows)
        batches += 1
        if progress is not None:
            progress(rotated)
    return rotated, batches


def field_key_problems(session: Session, cipher: FieldCipher) -> list[str]:
    """Why the keyring cannot read the newest stored ciphertexts (empty: it can).

    A key given unnamed is always ``k0``, so a wrong key looks like the right one by its
    id; only a decryption tells. Checked at start-up on the newest patient and the newest
    quarantined item (two indexed reads), so a server started with a wrong or retired
    key refuses to start with this message instead of answering every patient read with
    an internal error. Messages name tables and key ids, never a row's content.
    """
    problems: list[str] = []
    for spec in (_PATIENTS, _QUARANTINE):
        blob_col = getattr(spec.table, spec.blob)
        row = session.scalar(
            select(spec.table).where(blob_col.is_not(None)).order_by(spec.table.id.desc()).limit(1)
        )
        if row is None:
            continue
        key_id = row.key_id or ""
        if key_id not in cipher.keys:
            problems.append(
                f"{spec.name} is encrypted under key id {key_id!r}, which VITALCAST_FIELD_KEY"
                " does not hold (keep a retired key in the ring until `vitalcast keys rotate`"
                " has re-encrypted every row)"
            )
            continue
        try:
            cipher.decrypt(getattr(row, spec.blob), key_id, context=spec.context(row))
        except ValueError:
            problems.append(
                f"key {key_id!r} of VITALCAST_FIELD_KEY does not decrypt {spec.name}: it is"
                " not the key the stored identifiers were encrypted with"
            )
    return problems


def check_field_keys(sessions: sessionmaker[Session], cipher: FieldCipher) -> None:
    """Refuse to run with a field-encryption keyring that cannot read the store.

    Raises:
        ConfigError: see :func:`field_key_problems`.
    """
    with sessions() as session:
        problems = field_key_problems(session, cipher)
    if problems:
        raise ConfigError("; ".join(problems))
