"""Store a batch of canonical records in one unit of work, quarantining what breaks rules.

Every adapter ends here, so every source gets the same rules (:mod:`.validate`), the same
idempotency (natural keys and observation dedup keys) and the same report. The caller
owns the transaction: a failure anywhere rolls the whole batch back, so a file or message
is never half-written.

Bulk loads are the common case (a PhysioNet archive is 1.7 million rows), so references
are resolved in bulk (:mod:`._resolve`) and observations are written with ``COPY`` and
``ON CONFLICT DO NOTHING`` on PostgreSQL (:mod:`._bulk`); see docs/benchmarks.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import (
    ConditionRecord,
    ImagingStudyRecord,
    ObservationRecord,
    OutcomeRecord,
    RecordBatch,
)
from vitalcast.clinical.tables import (
    Condition,
    ImagingStudy,
    Outcome,
    Patient,
)
from vitalcast.db.base import utcnow
from vitalcast.ingest._bulk import Row, insert_observations
from vitalcast.ingest._input_checks import (
    Reject,
    observation_location,
    storable_text,
    within_limits,
)
from vitalcast.ingest._reopen import reopen_stated_stays, store_discharge_cancellations
from vitalcast.ingest._resolve import (
    Resolver,
    chunks,
    insert_rows,
    store_encounters,
    store_patients,
)
from vitalcast.ingest._retract import store_retractions, withheld
from vitalcast.ingest._withdraw import store_withdrawals
from vitalcast.ingest.quarantine import encrypt_raw
from vitalcast.ingest.report import IngestReport, Reopening, Withdrawal
from vitalcast.ingest.tables import IngestRun, QuarantineItem
from vitalcast.ingest.validate import (
    Invalid,
    check_day,
    check_observation,
    check_time,
    contradicts,
)
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.text_input import printable

logger = logging.getLogger(__name__)


def store_batch(
    session: Session,
    batch: RecordBatch,
    *,
    source: str,
    location: str,
    cipher: FieldCipher,
    now: datetime | None = None,
    known_patients: Mapping[str, int] | None = None,
    agent: audit.Agent = audit.SYSTEM,
    audited: bool = True,
    name_patients: bool = True,
) -> IngestReport:
    """Store ``batch`` (not committing) and return its report.

    The batch is audited (``ingest.batch``: source, run id, counts and the public ids of
    the patients it wrote data about, never an MRN, a name or a file name) in the same
    transaction, as the last write, so the audit chain's lock is held only from there to
    the caller's commit. A caller that stores several batches in one transaction passes
    ``audited=False`` and calls :func:`audit_ingest` once with the merged report at the
    end.

    Args:
        session: the unit of work; the caller commits or rolls back.
        source: short source name ("physionet2012", "fhir", "hl7v2", "mqtt", ...).
        location: the input's location (file name, message id), kept on the run.
        cipher: encrypts direct identifiers and hashes MRNs.
        now: the reference time for "future" checks (tests pin it).
        known_patients: patient refs the caller already resolved to ids (e.g. DICOM
            studies matched by MRN hash to a patient of another source).
        agent: who ingests (the CLI, a listener, an API caller), for the audit trail.
        audited: write the ``ingest.batch`` event (see above).
        name_patients: list the patients in that event; False for a caller that writes
            its own event per patient (the HTTP observations route), so that a
            patient's trail does not show the same write twice.
    """
    now = (now or utcnow()).astimezone(UTC)
    report = IngestReport(source=source, location=location)
    run = IngestRun(source=source, location=printable(location)[:500], started_at=now)
    session.add(run)
    session.flush()
    report.run_id = run.id
    resolver = Resolver(session, source, cipher)
    resolver.patients.update(known_patients or {})
    quarantine: list[dict[str, Any]] = []

    def reject(
        kind: str, where: str, reason_code: str, reason: str, raw: Any, **extra: Any
    ) -> None:
        # The row must be storable whatever the item held: NUL and unpaired surrogates
        # in its location, reason, code or raw form are written as escapes (printable).
        report.reject(kind, printable(where), reason_code, printable(reason))
        if extra.get("patient_id") is not None:
            report.patients.add(extra["patient_id"])
        archive(where, reason_code, reason, raw, **extra)

    def archive(where: str, reason_code: str, reason: str, raw: Any, **extra: Any) -> None:
        """Keep a row in the quarantine: a rejected item (counted by ``reject``), or a
        stored result a retraction removed (not an input item: never counted)."""
        where, reason = printable(where), printable(reason)
        location = where[:500]
        text = raw if isinstance(raw, str) or raw is None else _raw_json(raw)
        text = None if text is None else printable(text)
        blob, key_id = (None, None) if text is None else encrypt_raw(cipher, text, run.id, location)
        quarantine.append(
            {
                "run_id": run.id,
                "source": source,
                "location": location,
                "reason_code": reason_code[:64],
                "reason": reason[:500],
                "raw_enc": blob,
                "key_id": key_id,
                "patient_id": extra.get("patient_id"),
                "code": (extra.get("code") or None) and printable(str(extra["code"]))[:64],
                "effective_at": extra.get("effective_at"),
                "received_at": now,
            }
        )

    for item in batch.rejected:
        reject(item.kind, item.location, item.reason_code, item.reason, item.raw)
    batch = storable_text(batch, reject)
    batch = within_limits(batch, reject)
    store_patients(session, batch.patients, resolver, report, reject)
    store_encounters(session, batch.encounters, resolver, report, reject, now)
    reopen_stated_stays(session, batch.encounters, resolver, report)
    store_withdrawals(session, batch.withdrawals, resolver, report, reject, now)
    store_discharge_cancellations(session, batch.discharge_cancellations, resolver, report, reject)
    _store_observations(session, batch.observations, resolver, report, reject, now)
    store_retractions(session, batch.retractions, resolver, report, reject, archive)
    _store_conditions(session, batch.conditions, resolver, report, reject, now)
    _store_imaging(session, batch.imaging_studies, resolver, report, reject, now)
    _store_outcomes(session, batch.outcomes, resolver, report, reject, now)

    insert_rows(session, QuarantineItem, quarantine)
    run.finished_at = utcnow()
    run.received, run.stored = report.received, report.stored
    run.duplicates, run.quarantined = report.duplicates, report.quarantined
    run.report = {k: vars(v) for k, v in report.kinds.items()} | {"reasons": dict(report.reasons)}
    session.flush()
    if audited:
        audit_ingest(session, report, agent, name_patients=name_patients)
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


def audit_ingest(
    session: Session, report: IngestReport, agent: audit.Agent, *, name_patients: bool = True
) -> None:
    """Write the ``ingest.batch`` audit event of a stored report, and one
    ``encounter.withdrawn`` event per stay it withdrew and one
    ``encounter.discharge_cancelled`` per stay it reopened, naming the patient, so that
    the patient's trail shows why their stay left the ward or came back to it.

    ``ingest.batch`` holds counts and, in ``patients``, the public ids of the patients the
    run wrote data about (sorted; never an MRN or a name). One event names them all, rather
    than one event per patient: an MQTT batch of 500 readings from 200 monitors would
    otherwise append 200 chained rows, and a PhysioNet set 4,000; each patient's trail
    finds the event through :func:`vitalcast.security.audit.about_patient`.
    """
    stays: list[tuple[str, Withdrawal | Reopening, str]] = [
        ("encounter.withdrawn", w, w.reason_code) for w in report.withdrawn
    ]
    stays += [("encounter.discharge_cancelled", r, "discharge_cancelled") for r in report.reopened]
    for event, stay, reason in stays:
        audit.record(
            session,
            agent.event(
                event,
                "U",
                patient_id=stay.patient_public_id,
                resource=f"Encounter/{stay.encounter_public_id}",
                details={"reason": reason, "run_id": report.run_id},
            ),
        )
    for taken in report.retracted:
        audit.record(
            session,
            agent.event(
                "observation.retracted",
                "D",
                patient_id=taken.patient_public_id,
                resource=f"IngestRun/{report.run_id}",
                details={"code": taken.code, "reason": taken.reason_code, "run_id": report.run_id},
            ),
        )
    details: dict[str, Any] = {
        "source": report.source,
        "run_id": report.run_id,
        "received": report.received,
        "stored": report.stored,
        "duplicates": report.duplicates,
        "quarantined": report.quarantined,
        "reasons": dict(report.reasons),
        "withdrawn": len(report.withdrawn),
        "discharge_cancelled": len(report.reopened),
        "retracted": len(report.retracted),
    }
    if name_patients:
        details["patients"] = _public_ids(session, report.patients)
    audit.record(
        session,
        agent.event("ingest.batch", "C", resource=f"IngestRun/{report.run_id}", details=details),
    )


def _public_ids(session: Session, ids: set[int]) -> list[str]:
    """The public ids of these patients (internal ids), sorted."""
    found: list[str] = []
    for chunk in chunks(sorted(ids)):
        found.extend(session.scalars(select(Patient.public_id).where(Patient.id.in_(chunk))))
    return sorted(found)


def _raw_json(obj: Any) -> str:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.dumps(obj, default=str)


def _store_observations(
    session: Session,
    records: Sequence[ObservationRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
) -> None:
    counts = report.count("observation")
    if not records:
        return
    resolver.load_encounters({r.encounter_ref for r in records if r.encounter_ref is not None})
    resolver.load_patients({r.patient_ref for r in records if r.encounter_ref is None})
    resolver.load_births(
        {pid for _, pid in resolver.encounters.values()} | set(resolver.patients.values())
    )
    resolver.load_stays(
        pid
        for r in records
        if r.encounter_ref is None and (pid := resolver.patients.get(r.patient_ref)) is not None
    )
    births = resolver.births
    source = resolver.source
    rows: list[Row] = []
    kept: list[ObservationRecord] = []  # the record of each row, for a quarantine entry
    for rec in records:
        enc_ids: tuple[int, int] | None = None
        if rec.encounter_ref is not None:
            enc_ids = resolver.encounters.get(rec.encounter_ref)
            if enc_ids is None:
                reject(
                    "observation",
                    observation_location(rec),
                    "unknown_encounter",
                    "observation refers to an encounter that is not known",
                    rec,
                    code=rec.code,
                )
                continue
            patient_id: int | None = enc_ids[1]
        else:
            patient_id = resolver.patients.get(rec.patient_ref)
        if patient_id is None:
            reject(
                "observation",
                observation_location(rec),
                "unknown_patient",
                "observation refers to a patient that is not known",
                rec,
                code=rec.code,
            )
            continue
        try:
            clean = check_observation(rec, now=now, born_on=births.get(patient_id))
        except Invalid as exc:
            reject(
                "observation",
                observation_location(rec),
                exc.code,
                str(exc),
                rec,
                patient_id=patient_id,
                code=rec.code,
                effective_at=rec.effective_at if rec.effective_at.tzinfo else None,
            )
            continue
        # An observation that names no stay joins the stay it was taken in.
        encounter_id = enc_ids[0] if enc_ids else resolver.stay_at(patient_id, clean.effective_at)
        rows.append(
            (
                patient_id,
                encounter_id,
                clean.code,
                clean.value,
                clean.value_text,
                clean.unit,
                clean.effective_at.replace(tzinfo=None),  # UTC after check_observation
                clean.source_ref[:300],
                clean.device_id,
                clean.dedup_key(source),
                rec.version,
            )
        )
        kept.append(rec)
    rows = _not_retracted(session, rows, kept, reject)
    counts.received += len(rows)
    written = insert_observations(session, rows, source=source, received_at=now)
    n_stored = sum(written.stored.values())
    counts.stored += n_stored
    counts.duplicates += len(rows) - n_stored
    if written.updated:
        report.updated["observation"] += written.updated
    report.touched_encounters.update(eid for eid in written.stored if eid is not None)
    report.patients |= written.patients


def _not_retracted(
    session: Session, rows: list[Row], records: list[ObservationRecord], reject: Reject
) -> list[Row]:
    """The rows whose result was not taken back by a retraction as new as they are; the
    others are quarantined as ``retracted`` (a result arriving after its retraction, or
    sent again after it, is never stored)."""
    taken_back = withheld(session, rows)
    if not taken_back:
        return rows
    out: list[Row] = []
    for row, rec in zip(rows, records, strict=True):
        version = taken_back.get((row[0], row[9]))
        if version is None or (row[10] is not None and row[10] > version):
            out.append(row)
            continue
        reject(
            "observation",
            observation_location(rec),
            "retracted",
            f"{rec.code}: this result was taken back by a retraction received before it"
            " (HL7 OBX-11 W/D/X or FHIR entered-in-error/cancelled); it is not stored",
            rec,
            patient_id=row[0],
            code=rec.code,
            effective_at=rec.effective_at,
        )
    return out


def _resolve_refs(
    rec: Any, kind: str, resolver: Resolver, reject: Reject
) -> tuple[int, int | None] | None:
    """(patient id, encounter id) of a condition, study or outcome; rejects unknown refs."""
    where = rec.source_ref or kind
    if rec.encounter_ref:
        enc = resolver.encounters.get(rec.encounter_ref)
        if enc is None:
            reject(kind, where, "unknown_encounter", f"{kind} refers to an unknown encounter", rec)
            return None
        return enc[1], enc[0]
    patient_id = resolver.patients.get(rec.patient_ref)
    if patient_id is None:
        reject(kind, where, "unknown_patient", f"{kind} refers to an unknown patient", rec)
        return None
    return patient_id, None


def _store_keyed(
    session: Session,
    kind: str,
    records: Sequence[Any],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
    *,
    table: Any,
    key_columns: tuple[str, ...],
    build: Callable[[Any, int, int | None], dict[str, Any]],
    time_field: str,
    day_field: str | None = None,
) -> None:
    """Resolve, check times, drop rows whose natural key exists (in batch or store), insert.

    Natural keys are looked up in bulk (``IN`` on the tuple of key columns). The key of a
    condition includes a nullable encounter id, which a unique index cannot enforce
    (NULLs are distinct), so the check is done here on every backend alike.
    """
    counts = report.count(kind)
    if not records:
        return
    resolver.load_encounters({r.encounter_ref for r in records if r.encounter_ref})
    resolver.load_patients({r.patient_ref for r in records if not r.encounter_ref})
    rows: list[dict[str, Any]] = []
    for rec in records:
        ids = _resolve_refs(rec, kind, resolver, reject)
        if ids is None:
            continue
        at = getattr(rec, time_field)
        day = getattr(rec, day_field) if day_field else None
        born = resolver.births.get(ids[0])
        try:
            if at is not None:
                check_time(at, now=now, born_on=born, what=time_field)
            if day is not None:
                check_day(day, now=now, born_on=born, what=str(day_field))
        except Invalid as exc:
            reject(kind, rec.source_ref or kind, exc.code, str(exc), rec, patient_id=ids[0])
            continue
        counts.received += 1
        rows.append(build(rec, ids[0], ids[1]))
    # Fetch candidates by the first key column, compare whole keys here (NULL-safe).
    columns = [getattr(table, c) for c in key_columns]
    existing: set[tuple[Any, ...]] = set()
    firsts = sorted({r[key_columns[0]] for r in rows if r[key_columns[0]] is not None})
    for chunk in chunks(firsts):
        found = session.execute(select(*columns).where(columns[0].in_(chunk)))
        existing.update(tuple(r) for r in found)
    fresh: list[dict[str, Any]] = []
    for row in rows:
        key = tuple(row[c] for c in key_columns)
        if key in existing:
            counts.duplicates += 1
            continue
        existing.add(key)
        fresh.append(row)
    insert_rows(session, table, fresh)
    counts.stored += len(fresh)
    report.patients.update(row["patient_id"] for row in fresh)


def _store_conditions(
    session: Session,
    records: Sequence[ConditionRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
) -> None:
    source = resolver.source

    def build(rec: ConditionRecord, patient_id: int, encounter_id: int | None) -> dict[str, Any]:
        return {
            "patient_id": patient_id,
            "encounter_id": encounter_id,
            "system": rec.system,
            "code": rec.code,
            "display": rec.display,
            "onset_at": rec.onset_at,
            "onset_on": rec.onset_on,
            "source": source,
            "source_ref": rec.source_ref[:300],
        }

    _store_keyed(
        session,
        "condition",
        records,
        resolver,
        report,
        reject,
        now,
        table=Condition,
        key_columns=("patient_id", "system", "code", "encounter_id"),
        build=build,
        time_field="onset_at",
        day_field="onset_on",
    )


def _store_imaging(
    session: Session,
    records: Sequence[ImagingStudyRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
) -> None:
    source = resolver.source
    resolver.load_births(p for r in records if (p := resolver.patients.get(r.patient_ref)))
    records = [r for r in records if not _identity_conflict(r, resolver, reject)]

    def build(rec: ImagingStudyRecord, patient_id: int, encounter_id: int | None) -> dict[str, Any]:
        return {
            "study_uid": rec.study_uid,
            "patient_id": patient_id,
            "encounter_id": encounter_id,
            "modality": rec.modality,
            "body_part": rec.body_part,
            "started_at": rec.started_at,
            "started_on": rec.started_on,
            "description": rec.description,
            "series_count": rec.series_count,
            "instance_count": rec.instance_count,
            "source": source,
            "source_ref": rec.source_ref[:300],
        }

    _store_keyed(
        session,
        "imaging_study",
        records,
        resolver,
        report,
        reject,
        now,
        table=ImagingStudy,
        key_columns=("study_uid",),
        build=build,
        time_field="started_at",
        day_field="started_on",
    )


def _identity_conflict(rec: ImagingStudyRecord, resolver: Resolver, reject: Reject) -> bool:
    """Quarantine a study whose header gives another birth date than the patient its MRN
    matched (see ``_resolve.store_patients``: two people can share an MRN)."""
    patient_id = resolver.patients.get(rec.patient_ref)
    born = resolver.births.get(patient_id) if patient_id is not None else None
    if not contradicts(rec.patient_birth_date, born):
        return False
    reason = (
        "its Patient ID is the MRN of a stored patient with a different birth date, so the"
        " study was not attached to that patient; correct the identity and import it again"
    )
    reject("imaging_study", rec.source_ref, "identity_conflict", reason, rec)
    return True


def _store_outcomes(
    session: Session,
    records: Sequence[OutcomeRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
) -> None:
    source = resolver.source

    def build(rec: OutcomeRecord, patient_id: int, encounter_id: int | None) -> dict[str, Any]:
        return {
            "encounter_id": encounter_id,
            "kind": rec.kind,
            "patient_id": patient_id,
            "value": rec.value,
            "occurred_at": rec.occurred_at,
            "known_at": rec.known_at or now,
            "source": source,
        }

    _store_keyed(
        session,
        "outcome",
        records,
        resolver,
        report,
        reject,
        now,
        table=Outcome,
        key_columns=("encounter_id", "kind"),
        build=build,
        time_field="occurred_at",
    )
