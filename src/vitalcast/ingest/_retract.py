"""Removing stored results that a newer version of them takes back.

A laboratory withdraws a result it sent (HL7 OBX-11 ``W`` wrong, ``D`` deleted, ``X``
cannot be obtained; a FHIR Observation ``entered-in-error`` or ``cancelled``): a
haemolysed potassium, a result filed on the wrong patient. Refused like any other
withdrawn result, the retraction left the stored value where it was, feeding the
patient's features and risk. Here a retraction removes the stored result of the same
source identity (its dedup key) when the stored version is older, and the stay is
rescored without it.

Nothing is lost: the removed row is kept in the quarantine (reason ``retracted``,
encrypted like every quarantined item) with where the retraction came from, and each
retraction writes an ``observation.retracted`` audit event naming the patient. A
retraction that removes nothing (no such result, or a stored version as new or newer) is
quarantined under the source's reason, saying which. A retraction arriving before its
result (out of order) removes nothing, and the result is then stored: that case is
reported by its quarantined retraction, not prevented.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import ObservationRetraction
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.ingest._input_checks import Reject
from vitalcast.ingest._resolve import Resolver
from vitalcast.ingest.report import IngestReport, Retraction


class Archive(Protocol):
    """Keeps a removed row in the quarantine without counting it as an input item."""

    def __call__(
        self, where: str, reason_code: str, reason: str, raw: str, **extra: Any
    ) -> None: ...


def store_retractions(
    session: Session,
    records: Sequence[ObservationRetraction],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    archive: Archive,
) -> None:
    """Apply the batch's retractions, after its observations are stored (a result and
    its retraction in one batch: the newer one wins, as for any two versions)."""
    if not records:
        return
    counts = report.count("observation")
    resolver.load_patients({r.patient_ref for r in records})
    source = resolver.source
    for rec in records:
        patient_id = resolver.patients.get(rec.patient_ref)
        where = rec.source_ref or f"observation {rec.code}"
        if patient_id is None:
            reject(
                "observation",
                where,
                rec.reason_code,
                f"{rec.code}: {rec.reason}; no such patient is stored, so nothing was retracted",
                rec.raw,
                code=rec.code,
            )
            continue
        key = rec.dedup_key(source)
        removed = session.execute(
            delete(Observation)
            .where(
                Observation.patient_id == patient_id,
                Observation.dedup_key == key,
                or_(Observation.source_version.is_(None), Observation.source_version < rec.version),
            )
            .returning(
                Observation.encounter_id,
                Observation.code,
                Observation.value,
                Observation.value_text,
                Observation.unit,
                Observation.effective_at,
                Observation.source,
                Observation.source_ref,
                Observation.source_version,
            )
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if removed is None:
            kept = session.scalar(
                select(Observation.id).where(
                    Observation.patient_id == patient_id, Observation.dedup_key == key
                )
            )
            why = (
                "the stored result is of this version or newer, so it is kept"
                if kept is not None
                else "no such result is stored, so nothing was retracted"
            )
            reject(
                "observation",
                where,
                rec.reason_code,
                f"{rec.code}: {rec.reason}; {why}",
                rec.raw,
                patient_id=patient_id,
                code=rec.code,
            )
            continue
        row = removed._mapping
        archive(
            row["source_ref"] or where,
            "retracted",
            f"{row['code']}: result taken back by {where} ({rec.reason}); removed from the"
            " store, kept here",
            json.dumps({k: _plain(v) for k, v in row.items()}),
            patient_id=patient_id,
            code=row["code"],
            effective_at=row["effective_at"],
        )
        counts.received += 1
        counts.stored += 1  # the retraction was applied: its effect is written
        public_id = session.scalar(select(Patient.public_id).where(Patient.id == patient_id))
        report.retracted.append(Retraction(where, rec.code, rec.reason_code, str(public_id)))
        report.patients.add(patient_id)
        if row["encounter_id"] is not None:
            report.touched_encounters.add(row["encounter_id"])  # rescored without it


def _plain(value: Any) -> Any:
    """A removed row's value as JSON holds it (times as ISO text)."""
    return value.isoformat() if hasattr(value, "isoformat") else value
