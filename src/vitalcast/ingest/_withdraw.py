"""Withdrawing stored stays that a newer version says never were stays.

A FHIR Encounter with status ``entered-in-error`` or ``cancelled`` is no stay. Refused
for a new stay, it was also refused for one already stored, which then stayed in
progress: on the ward, rescored, shown to clinicians as a stay the EHR says was an error.
Here a newer version of a stored stay withdraws it instead (``Encounter.withdrawn_at``):
it leaves every query for stays in progress (``Encounter.in_progress``) and the scored
population, keeps its data and history, and is reported and audited per patient.

Versions are ordered as every update is (:func:`vitalcast.ingest._resolve._newer`): an
equal or older version withdraws nothing (a duplicate), so a late old message never
withdraws a stay, and a withdrawal is final, so none resurrects one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vitalcast.clinical.records import EncounterWithdrawal
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.ingest._resolve import Resolver, _newer, chunks
from vitalcast.ingest.report import IngestReport, Withdrawal

_NO_VERSION = (
    "; it has no meta.versionId or meta.lastUpdated to order it after the stored stay,"
    " which is kept in progress"
)


def store_withdrawals(
    session: Session,
    records: Sequence[EncounterWithdrawal],
    resolver: Resolver,
    report: IngestReport,
    reject: Any,
    now: datetime,
) -> None:
    """Withdraw the stored stays these records are newer versions of; quarantine the
    rest under their reason code (no such stay, or a version that cannot be ordered).

    Runs after the batch's stays are stored and updated, so that a withdrawal is compared
    with the newest version of its stay, in the store or in this batch.
    """
    if not records:
        return
    counts = report.count("encounter")
    resolver.load_encounters(r.ref for r in records)
    stored = _stored(session, {k[0] for r in records if (k := resolver.encounters.get(r.ref))})
    chosen: dict[int, EncounterWithdrawal] = {}
    for rec in records:
        where = rec.source_ref or rec.ref
        known = resolver.encounters.get(rec.ref)
        if known is None:
            reject("encounter", where, rec.reason_code, rec.reason, rec)
            continue
        version, withdrawn_at, _, _ = stored[known[0]]
        if withdrawn_at is None and rec.version is None:
            reason = rec.reason + _NO_VERSION
            reject("encounter", where, rec.reason_code, reason, rec, patient_id=known[1])
            continue
        counts.received += 1
        newest = chosen.get(known[0])
        if withdrawn_at is not None or not _newer(rec.version, newest or version):
            counts.duplicates += 1  # already withdrawn, or not newer than what is known
            continue
        if newest is not None:
            counts.duplicates += 1  # superseded by a newer withdrawal in this batch
        chosen[known[0]] = rec
    if not chosen:
        return
    session.execute(
        update(Encounter),
        [
            {
                "id": eid,
                "withdrawn_at": now,
                "withdrawn_reason": rec.reason_code,
                "source_version": rec.version,
            }
            for eid, rec in chosen.items()
        ],
    )
    counts.stored += len(chosen)
    for eid, rec in chosen.items():
        _, _, patient_public_id, encounter_public_id = stored[eid]
        report.withdrawn.append(
            Withdrawal(
                rec.source_ref or rec.ref,
                rec.reason_code,
                patient_public_id,
                encounter_public_id,
            )
        )
    report.touched_encounters.difference_update(chosen)  # nothing left to rescore


def _stored(
    session: Session, ids: set[int]
) -> dict[int, tuple[str | None, datetime | None, str, str]]:
    """Encounter id -> (stored version, withdrawn at, patient and stay public ids)."""
    found: dict[int, tuple[str | None, datetime | None, str, str]] = {}
    for chunk in chunks(sorted(ids)):
        rows = session.execute(
            select(
                Encounter.id,
                Encounter.source_version,
                Encounter.withdrawn_at,
                Patient.public_id,
                Encounter.public_id,
            )
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Encounter.id.in_(chunk))
        )
        found.update({eid: (v, w, pub, enc) for eid, v, w, pub, enc in rows})
    return found
