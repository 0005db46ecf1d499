"""Store a batch of canonical records in one unit of work, quarantining what breaks rules.

Every adapter ends here, so every source gets the same rules (:mod:`.validate`), the same
idempotency (natural keys and observation dedup keys) and the same report. The caller
owns the transaction: a failure anywhere rolls the whole batch back, so a file or message
is never half-written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import (
    PUBLIC_ENCOUNTER_REF,
    PUBLIC_PATIENT_REF,
    ConditionRecord,
    EncounterRecord,
    ImagingStudyRecord,
    ObservationRecord,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
)
from vitalcast.clinical.tables import (
    Condition,
    Encounter,
    ImagingStudy,
    Observation,
    Outcome,
    Patient,
)
from vitalcast.db.base import utcnow
from vitalcast.db.types import new_public_id
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.tables import IngestRun, QuarantineItem
from vitalcast.ingest.validate import Invalid, check_observation
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)

_CHUNK = 5000


class _Resolver:
    """Maps source references to database ids, from this batch first, then the store."""

    def __init__(self, session: Session, source: str) -> None:
        self.session = session
        self.source = source
        self.patients: dict[str, int] = {}
        self.encounters: dict[str, tuple[int, int]] = {}  # ref -> (encounter id, patient id)

    def patient(self, ref: str) -> int | None:
        if ref not in self.patients:
            where = (
                Patient.public_id == ref.removeprefix(PUBLIC_PATIENT_REF)
                if ref.startswith(PUBLIC_PATIENT_REF)
                else (Patient.source == self.source) & (Patient.source_ref == ref)
            )
            pid = self.session.scalar(select(Patient.id).where(where))
            if pid is None:
                return None
            self.patients[ref] = pid
        return self.patients[ref]

    def encounter(self, ref: str) -> tuple[int, int] | None:
        if ref not in self.encounters:
            where = (
                Encounter.public_id == ref.removeprefix(PUBLIC_ENCOUNTER_REF)
                if ref.startswith(PUBLIC_ENCOUNTER_REF)
                else (Encounter.source == self.source) & (Encounter.source_ref == ref)
            )
            row = self.session.execute(
                select(Encounter.id, Encounter.patient_id).where(where)
            ).first()
            if row is None:
                return None
            self.encounters[ref] = (row[0], row[1])
        return self.encounters[ref]


def store_batch(
    session: Session,
    batch: RecordBatch,
    *,
    source: str,
    location: str,
    cipher: FieldCipher,
    now: datetime | None = None,
) -> IngestReport:
    """Store ``batch`` (not committing) and return its report.

    Args:
        session: the unit of work; the caller commits or rolls back.
        source: short source name ("physionet2012", "fhir", "hl7v2", "mqtt", ...).
        location: the input's location (file name, message id), kept on the run.
        cipher: encrypts direct identifiers and hashes MRNs.
        now: the reference time for "future" checks (tests pin it).
    """
    now = now or utcnow()
    report = IngestReport(source=source, location=location)
    run = IngestRun(source=source, location=location[:500], started_at=now)
    session.add(run)
    session.flush()
    report.run_id = run.id
    resolver = _Resolver(session, source)
    quarantine: list[dict[str, Any]] = []

    def reject(
        kind: str, where: str, reason_code: str, reason: str, raw: Any, **extra: Any
    ) -> None:
        report.reject(kind, where, reason_code, reason)
        quarantine.append(
            {
                "run_id": run.id,
                "source": source,
                "location": where[:500],
                "reason_code": reason_code,
                "reason": reason[:500],
                "raw": raw if isinstance(raw, str) or raw is None else _raw_json(raw),
                **extra,
            }
        )

    for item in batch.rejected:
        reject(item.kind, item.location, item.reason_code, item.reason, item.raw)
    _store_patients(session, batch.patients, resolver, report, cipher)
    _store_encounters(session, batch.encounters, resolver, report, reject)
    _store_observations(session, batch.observations, resolver, report, reject, now)
    _store_simple(session, batch, resolver, report, reject)

    if quarantine:
        for start in range(0, len(quarantine), _CHUNK):
            session.execute(insert(QuarantineItem), quarantine[start : start + _CHUNK])
    run.finished_at = utcnow()
    run.received, run.stored = report.received, report.stored
    run.duplicates, run.quarantined = report.duplicates, report.quarantined
    run.report = {k: vars(v) for k, v in report.kinds.items()} | {"reasons": dict(report.reasons)}
    session.flush()
    logger.info(
        "ingest run stored",
        extra={
            "source": source,
            "run_id": run.id,
            "received": report.received,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "quarantined": report.quarantined,
        },
    )
    return report


def _raw_json(obj: Any) -> str:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.dumps(obj, default=str)


def _store_patients(
    session: Session,
    records: Sequence[PatientRecord],
    resolver: _Resolver,
    report: IngestReport,
    cipher: FieldCipher,
) -> None:
    counts = report.count("patient")
    for rec in records:
        counts.received += 1
        if rec.ref in resolver.patients or resolver.patient(rec.ref) is not None:
            counts.duplicates += 1
            continue
        mrn_hmac = cipher.mrn_hash(rec.mrn) if rec.mrn else None
        if mrn_hmac is not None:
            existing = session.scalar(select(Patient.id).where(Patient.mrn_hmac == mrn_hmac))
            if existing is not None:
                # Same person known from another source: link, do not duplicate.
                resolver.patients[rec.ref] = existing
                counts.duplicates += 1
                continue
        public_id = new_public_id()
        identifiers = rec.identifiers()
        blob, key_id = (
            cipher.encrypt(identifiers, context=f"patient:{public_id}")
            if identifiers
            else (None, None)
        )
        patient = Patient(
            public_id=public_id,
            source=resolver.source,
            source_ref=rec.ref,
            sex=rec.sex,
            identifiers_enc=blob,
            key_id=key_id,
            mrn_hmac=mrn_hmac,
        )
        session.add(patient)
        session.flush()
        resolver.patients[rec.ref] = patient.id
        counts.stored += 1


def _store_encounters(
    session: Session,
    records: Sequence[EncounterRecord],
    resolver: _Resolver,
    report: IngestReport,
    reject: Any,
) -> None:
    counts = report.count("encounter")
    for rec in records:
        existing = resolver.encounter(rec.ref)
        if existing is not None:
            counts.received += 1
            counts.duplicates += 1
            row = session.get(Encounter, existing[0])
            if row is not None and rec.discharged_at and row.discharged_at is None:
                row.discharged_at = rec.discharged_at  # a discharge (ADT^A03) completes a stay
            continue
        patient_id = resolver.patient(rec.patient_ref)
        if patient_id is None:
            reject(
                "encounter",
                rec.source_ref or rec.ref,
                "unknown_patient",
                "encounter refers to a patient that is not known",
                rec,
            )
            continue
        if rec.admitted_at.tzinfo is None:
            reject(
                "encounter",
                rec.source_ref or rec.ref,
                "naive_time",
                "admission time has no timezone",
                rec,
            )
            continue
        counts.received += 1
        enc = Encounter(
            patient_id=patient_id,
            source=resolver.source,
            source_ref=rec.ref,
            kind=rec.kind,
            unit=rec.unit,
            admission_source=rec.admission_source,
            admitted_at=rec.admitted_at,
            discharged_at=rec.discharged_at,
            age_years=rec.age_years,
            height_cm=rec.height_cm,
            weight_kg=rec.weight_kg,
            attributes=rec.attributes,
        )
        session.add(enc)
        session.flush()
        resolver.encounters[rec.ref] = (enc.id, patient_id)
        counts.stored += 1


def _store_observations(
    session: Session,
    records: Sequence[ObservationRecord],
    resolver: _Resolver,
    report: IngestReport,
    reject: Any,
    now: datetime,
) -> None:
    counts = report.count("observation")
    rows: list[dict[str, Any]] = []
    for rec in records:
        where = rec.source_ref or f"observation {rec.code} at {rec.effective_at.isoformat()}"
        enc_ids: tuple[int, int] | None = None
        if rec.encounter_ref is not None:
            enc_ids = resolver.encounter(rec.encounter_ref)
            if enc_ids is None:
                reject(
                    "observation",
                    where,
                    "unknown_encounter",
                    "observation refers to an encounter that is not known",
                    rec,
                    code=rec.code,
                )
                continue
        patient_id = enc_ids[1] if enc_ids else resolver.patient(rec.patient_ref)
        if patient_id is None:
            reject(
                "observation",
                where,
                "unknown_patient",
                "observation refers to a patient that is not known",
                rec,
                code=rec.code,
            )
            continue
        try:
            clean = check_observation(rec, now=now)
        except Invalid as exc:
            reject(
                "observation",
                where,
                exc.code,
                str(exc),
                rec,
                patient_id=patient_id,
                code=rec.code,
                effective_at=rec.effective_at if rec.effective_at.tzinfo else None,
            )
            continue
        counts.received += 1
        rows.append(
            {
                "patient_id": patient_id,
                "encounter_id": enc_ids[0] if enc_ids else None,
                "code": clean.code,
                "value": clean.value,
                "value_text": clean.value_text,
                "unit": clean.unit,
                "effective_at": clean.effective_at,
                "received_at": now,
                "source": resolver.source,
                "source_ref": clean.source_ref[:300],
                "device_id": clean.device_id,
                "dedup_key": clean.dedup_key(resolver.source),
            }
        )
    fresh = _drop_duplicates(session, rows)
    counts.duplicates += len(rows) - len(fresh)
    for start in range(0, len(fresh), _CHUNK):
        session.execute(insert(Observation), fresh[start : start + _CHUNK])
    counts.stored += len(fresh)
    report.touched_encounters.update(r["encounter_id"] for r in fresh if r["encounter_id"])


def _drop_duplicates(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose dedup key is neither earlier in this batch nor already stored."""
    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for row in rows:
        if row["dedup_key"] not in seen:
            seen.add(row["dedup_key"])
            unique.append(row)
    existing: set[str] = set()
    keys = [r["dedup_key"] for r in unique]
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        existing.update(
            session.scalars(select(Observation.dedup_key).where(Observation.dedup_key.in_(chunk)))
        )
    return [r for r in unique if r["dedup_key"] not in existing]


def _store_simple(
    session: Session,
    batch: RecordBatch,
    resolver: _Resolver,
    report: IngestReport,
    reject: Any,
) -> None:
    """Conditions, imaging studies and outcomes: resolve, dedupe on natural keys, insert."""
    _store_kind(session, "condition", batch.conditions, resolver, report, reject, _condition_row)
    _store_kind(
        session, "imaging_study", batch.imaging_studies, resolver, report, reject, _imaging_row
    )
    _store_kind(session, "outcome", batch.outcomes, resolver, report, reject, _outcome_row)


def _store_kind(
    session: Session,
    kind: str,
    records: Iterable[Any],
    resolver: _Resolver,
    report: IngestReport,
    reject: Any,
    build: Any,
) -> None:
    counts = report.count(kind)
    for rec in records:
        where = rec.source_ref or kind
        enc = resolver.encounter(rec.encounter_ref) if rec.encounter_ref else None
        if rec.encounter_ref and enc is None:
            reject(kind, where, "unknown_encounter", f"{kind} refers to an unknown encounter", rec)
            continue
        patient_id = enc[1] if enc else resolver.patient(rec.patient_ref)
        if patient_id is None:
            reject(kind, where, "unknown_patient", f"{kind} refers to an unknown patient", rec)
            continue
        table, key, values = build(rec, patient_id, enc[0] if enc else None, resolver.source)
        counts.received += 1
        if session.scalar(select(table.id).filter_by(**key)) is not None:
            counts.duplicates += 1
            continue
        session.add(table(**key, **values))
        counts.stored += 1
    session.flush()


def _condition_row(
    rec: ConditionRecord, patient_id: int, encounter_id: int | None, source: str
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    key = {
        "patient_id": patient_id,
        "system": rec.system,
        "code": rec.code,
        "encounter_id": encounter_id,
    }
    return (
        Condition,
        key,
        {
            "display": rec.display,
            "onset_at": rec.onset_at,
            "source": source,
            "source_ref": rec.source_ref[:300],
        },
    )


def _imaging_row(
    rec: ImagingStudyRecord, patient_id: int, encounter_id: int | None, source: str
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    return (
        ImagingStudy,
        {"study_uid": rec.study_uid},
        {
            "patient_id": patient_id,
            "encounter_id": encounter_id,
            "modality": rec.modality,
            "body_part": rec.body_part,
            "started_at": rec.started_at,
            "description": rec.description,
            "series_count": rec.series_count,
            "instance_count": rec.instance_count,
            "source": source,
            "source_ref": rec.source_ref[:300],
        },
    )


def _outcome_row(
    rec: OutcomeRecord, patient_id: int, encounter_id: int | None, source: str
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    return (
        Outcome,
        {"encounter_id": encounter_id, "kind": rec.kind},
        {
            "patient_id": patient_id,
            "value": rec.value,
            "occurred_at": rec.occurred_at,
            "known_at": rec.known_at or utcnow(),
            "source": source,
        },
    )
