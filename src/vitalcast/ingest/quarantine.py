"""The quarantine's raw items: encrypted at rest, shown in clear only to permitted roles.

A rejected item is kept for review with its raw payload, and that payload is whatever
the source sent: an HL7 PID segment, a FHIR Patient, a CSV row, any of which may carry a
name, an MRN or a birth date. It is therefore encrypted like the patients' direct
identifiers (AES-256-GCM through :class:`~vitalcast.security.crypto.FieldCipher`, key id
beside the ciphertext, ``vitalcast keys rotate`` re-encrypts it), bound to its row by
:func:`~vitalcast.ingest.tables.raw_context`.

Reading the quarantine (:func:`list_quarantine`) is audited; decrypting raw items needs
``identifiers:read`` (admins, clinicians: not data scientists, who see only the reason,
location and code), and every item shown in clear writes its own audit event naming the
patient when one is known. A refused request is audited as ``denied``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Patient
from vitalcast.errors import Forbidden
from vitalcast.ingest.tables import QuarantineItem, raw_context
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.permissions import Permission, role_allows

MAX_LIST = 500


def encrypt_raw(
    cipher: FieldCipher, raw: str, run_id: int | None, location: str
) -> tuple[bytes, str]:
    """Ciphertext and key id of one quarantined raw item."""
    return cipher.encrypt({"raw": raw}, context=raw_context(run_id, location))


def decrypt_raw(cipher: FieldCipher, item: QuarantineItem) -> str | None:
    """The raw item in clear (None when none was kept).

    Raises:
        ValueError: the key id is not in the keyring, or the ciphertext was altered or
            moved to another row.
    """
    if item.raw_enc is None:
        return None
    payload = cipher.decrypt(
        item.raw_enc, item.key_id or "", context=raw_context(item.run_id, item.location)
    )
    return payload["raw"]


@dataclass(frozen=True)
class QuarantineRow:
    """One quarantined item as shown to a reviewer."""

    id: int
    run_id: int | None
    source: str
    location: str
    reason_code: str
    reason: str
    code: str | None
    patient_id: str | None  # public id, never an MRN
    effective_at: datetime | None
    received_at: datetime
    raw: str | None  # in clear only when revealed
    raw_state: str  # "shown", "withheld" (encrypted, not revealed), "absent", "unreadable"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "source": self.source,
            "location": self.location,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "code": self.code,
            "patient_id": self.patient_id,
            "effective_at": self.effective_at.isoformat() if self.effective_at else None,
            "received_at": self.received_at.isoformat(),
            "raw": self.raw,
            "raw_state": self.raw_state,
        }


def list_quarantine(
    session: Session,
    *,
    agent: audit.Agent,
    cipher: FieldCipher | None = None,
    reveal: bool = False,
    source: str | None = None,
    reason_code: str | None = None,
    run_id: int | None = None,
    limit: int = 50,
) -> list[QuarantineRow]:
    """The newest quarantined items matching the filters, audited in ``session``.

    With ``reveal``, raw items are decrypted, which needs ``identifiers:read`` in the
    agent's role and a cipher; each item shown writes a ``quarantine.raw_viewed`` event.

    Raises:
        Forbidden: ``reveal`` without ``identifiers:read`` (the refusal is audited in
            ``session``; the caller must commit it).
        ValueError: ``reveal`` without a cipher, or ``limit`` out of 1..500.
    """
    if not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_LIST}")
    filters = {
        k: v
        for k, v in {"source": source, "reason_code": reason_code, "run_id": run_id}.items()
        if v is not None
    }
    if reveal and not (agent.role and role_allows(agent.role, Permission.IDENTIFIERS_READ)):
        audit.record(
            session,
            agent.event(
                "quarantine.raw_viewed",
                "R",
                outcome="denied",
                resource="QuarantineItem",
                details={"filters": filters, "needs": Permission.IDENTIFIERS_READ.value},
            ),
        )
        raise Forbidden(
            f"showing quarantined raw items needs {Permission.IDENTIFIERS_READ.value};"
            f" role {agent.role or 'none'} does not hold it"
        )
    if reveal and cipher is None:
        raise ValueError("revealing raw items needs the field-encryption keys")
    query = (
        select(QuarantineItem, Patient.public_id)
        .outerjoin(Patient, Patient.id == QuarantineItem.patient_id)
        .order_by(QuarantineItem.id.desc())
        .limit(limit)
    )
    if source is not None:
        query = query.where(QuarantineItem.source == source)
    if reason_code is not None:
        query = query.where(QuarantineItem.reason_code == reason_code)
    if run_id is not None:
        query = query.where(QuarantineItem.run_id == run_id)
    rows: list[QuarantineRow] = []
    for item, public_id in session.execute(query).all():
        raw: str | None = None
        state = "absent" if item.raw_enc is None else "withheld"
        if reveal and item.raw_enc is not None:
            assert cipher is not None
            try:
                raw = decrypt_raw(cipher, item)
                state = "shown"
            except ValueError:
                state = "unreadable"  # a retired key, or an altered ciphertext
            audit.record(
                session,
                agent.event(
                    "quarantine.raw_viewed",
                    "R",
                    outcome="success" if state == "shown" else "failure",
                    patient_id=public_id,
                    resource=f"QuarantineItem/{item.id}",
                    details={"source": item.source, "reason_code": item.reason_code},
                ),
            )
        rows.append(
            QuarantineRow(
                id=item.id,
                run_id=item.run_id,
                source=item.source,
                location=item.location,
                reason_code=item.reason_code,
                reason=item.reason,
                code=item.code,
                patient_id=public_id,
                effective_at=item.effective_at,
                received_at=item.received_at,
                raw=raw,
                raw_state=state,
            )
        )
    audit.record(
        session,
        agent.event(
            "quarantine.listed",
            "R",
            resource="QuarantineItem",
            details={"filters": filters, "items": len(rows), "revealed": reveal},
        ),
    )
    return rows
