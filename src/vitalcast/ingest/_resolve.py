"""Bulk resolution of patient and encounter references for :mod:`.service`.

A batch refers to patients and encounters by *source reference*. Looking each one up
with its own SELECT costs a round trip per record, which dominates bulk loads (8,000
PhysioNet stays, 101,766 Diabetes 130 encounters), so references are resolved in
chunked ``IN`` queries and new rows are inserted in one multi-row statement with
``RETURNING`` (PostgreSQL and SQLite >= 3.35 both support it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from vitalcast.clinical.records import (
    PUBLIC_ENCOUNTER_REF,
    PUBLIC_PATIENT_REF,
    EncounterRecord,
    PatientRecord,
)
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.clinical.times import age_at
from vitalcast.db.types import new_public_id
from vitalcast.ingest._input_checks import Reject
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.validate import (
    Invalid,
    check_encounter,
    contradicts,
    drop_implausible_descriptors,
    plausible_age,
)
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)

CHUNK = 5000
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Resolver:
    """Maps source references to database ids, from this batch first, then the store."""

    def __init__(self, session: Session, source: str, cipher: FieldCipher) -> None:
        self.session = session
        self.source = source
        self.cipher = cipher
        self.patients: dict[str, int] = {}
        self.encounters: dict[str, tuple[int, int]] = {}  # ref -> (encounter id, patient id)
        self.births: dict[int, date] = {}  # patient id -> birth date, where known
        self._missing_patients: set[str] = set()
        self._missing_encounters: set[str] = set()
        self._births_loaded: set[int] = set()
        # patient id -> [(encounter id, admitted, discharged)], see stay_at
        self.stays: dict[int, list[tuple[int, datetime, datetime | None]]] = {}

    # -- lookups -------------------------------------------------------------------------
    def load_patients(self, refs: Iterable[str]) -> None:
        """Fetch the ids of these patient refs (those not known yet) in bulk."""
        todo = sorted({r for r in refs} - self.patients.keys() - self._missing_patients)
        public = [r for r in todo if r.startswith(PUBLIC_PATIENT_REF)]
        native = [r for r in todo if not r.startswith(PUBLIC_PATIENT_REF)]
        for chunk in chunks(native):
            rows = self.session.execute(
                select(Patient.source_ref, Patient.id).where(
                    Patient.source == self.source, Patient.source_ref.in_(chunk)
                )
            )
            self.patients.update({ref: pid for ref, pid in rows})
        for chunk in chunks(public):  # "vitalcast:patient/<public id>" from API callers
            ids = [r.removeprefix(PUBLIC_PATIENT_REF) for r in chunk]
            rows = self.session.execute(
                select(Patient.public_id, Patient.id).where(Patient.public_id.in_(ids))
            )
            self.patients.update({PUBLIC_PATIENT_REF + pub: pid for pub, pid in rows})
        self._missing_patients.update(r for r in todo if r not in self.patients)

    def load_encounters(self, refs: Iterable[str]) -> dict[str, Any]:
        """Fetch these encounter refs in bulk; returns ref -> stored discharge time."""
        todo = sorted({r for r in refs} - self.encounters.keys() - self._missing_encounters)
        discharged: dict[str, Any] = {}
        columns = (Encounter.id, Encounter.patient_id, Encounter.discharged_at)
        public = [r for r in todo if r.startswith(PUBLIC_ENCOUNTER_REF)]
        native = [r for r in todo if not r.startswith(PUBLIC_ENCOUNTER_REF)]
        for chunk in chunks(native):
            rows = self.session.execute(
                select(Encounter.source_ref, *columns).where(
                    Encounter.source == self.source, Encounter.source_ref.in_(chunk)
                )
            )
            for ref, eid, pid, dis in rows:
                self.encounters[ref] = (eid, pid)
                discharged[ref] = dis
        for chunk in chunks(public):  # "vitalcast:encounter/<public id>" from API callers
            ids = [r.removeprefix(PUBLIC_ENCOUNTER_REF) for r in chunk]
            rows = self.session.execute(
                select(Encounter.public_id, *columns).where(Encounter.public_id.in_(ids))
            )
            for pub, eid, pid, dis in rows:
                self.encounters[PUBLIC_ENCOUNTER_REF + pub] = (eid, pid)
                discharged[PUBLIC_ENCOUNTER_REF + pub] = dis
        self._missing_encounters.update(r for r in todo if r not in self.encounters)
        return discharged

    def forget_missing_patients(self) -> None:
        """After inserting patients, refs looked up earlier may exist now."""
        self._missing_patients.clear()

    def forget_missing_encounters(self) -> None:
        self._missing_encounters.clear()

    def patient(self, ref: str) -> int | None:
        if ref not in self.patients and ref not in self._missing_patients:
            self.load_patients([ref])
        return self.patients.get(ref)

    def encounter(self, ref: str) -> tuple[int, int] | None:
        if ref not in self.encounters and ref not in self._missing_encounters:
            self.load_encounters([ref])
        return self.encounters.get(ref)

    def load_stays(self, patient_ids: Iterable[int]) -> None:
        """Every stay of these patients (id, admission, discharge), in bulk, for
        :meth:`stay_at`."""
        todo = sorted(set(patient_ids) - self.stays.keys())
        for chunk in chunks(todo):
            rows = self.session.execute(
                select(
                    Encounter.patient_id,
                    Encounter.id,
                    Encounter.admitted_at,
                    Encounter.discharged_at,
                ).where(
                    Encounter.patient_id.in_(chunk),
                    # A withdrawn stay never was one: no reading joins it.
                    Encounter.withdrawn_at.is_(None),
                )
            )
            for pid, eid, admitted, discharged in rows:
                self.stays.setdefault(pid, []).append((eid, admitted, discharged))
        for pid in todo:
            self.stays.setdefault(pid, [])

    def stay_at(self, patient_id: int, at: datetime) -> int | None:
        """The patient's stay that ``at`` falls in (admitted at or before it, not
        discharged before it), the latest admitted if several; None outside every stay.

        Why: an observation sent for a patient without naming the stay (the API's compact
        form, a device bound to a patient) belongs to the stay it was taken in. Stored
        without one it would be kept but never reach a stay's features, its risk or the
        patient page.
        """
        if patient_id not in self.stays:
            self.load_stays([patient_id])
        covering = [
            (admitted, eid)
            for eid, admitted, discharged in self.stays[patient_id]
            if admitted <= at and (discharged is None or at <= discharged)
        ]
        return max(covering)[1] if covering else None

    def load_births(self, patient_ids: Iterable[int]) -> None:
        """Birth dates of stored patients (decrypted; only patients that have identifiers)."""
        todo = sorted(set(patient_ids) - self._births_loaded)
        self._births_loaded.update(todo)
        for chunk in chunks(todo):
            rows = self.session.execute(
                select(Patient.id, Patient.public_id, Patient.identifiers_enc, Patient.key_id)
                .where(Patient.id.in_(chunk))
                .where(Patient.identifiers_enc.is_not(None))
            )
            for pid, public_id, blob, key_id in rows:
                if pid in self.births or blob is None or key_id is None:
                    continue
                try:
                    ids = self.cipher.decrypt(blob, key_id, context=f"patient:{public_id}")
                except ValueError:
                    # A retired key: the birth-date rule cannot be applied to this patient.
                    logger.warning("cannot decrypt identifiers of patient %s", pid)
                    continue
                if "birth_date" in ids:
                    self.births[pid] = date.fromisoformat(ids["birth_date"])


def insert_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Multi-row INSERT through the driver's ``executemany``.

    Core ``executemany`` without RETURNING lets psycopg pipeline one prepared statement;
    ORM bulk inserts or ``RETURNING`` make SQLAlchemy render one huge multi-VALUES
    statement per page instead, whose client-side parsing dominated bulk loads (profiled
    on Diabetes 130). Ids are then read back with one ``IN`` query per chunk.
    """
    for chunk in chunks(rows):
        session.execute(table.__table__.insert(), list(chunk))
    _refresh_statistics(session, table.__tablename__, len(rows))


#: Rows one session may insert into a table before its planner statistics are refreshed.
ANALYZE_AFTER = 10_000


def _refresh_statistics(session: Session, table: str, inserted: int) -> None:
    """ANALYZE ``table`` once this session has added ``ANALYZE_AFTER`` rows, then at each doubling.

    The id look-ups after an insert (``source_ref IN (...)`` of up to 5,000 refs) are
    planned from the table's statistics. A bulk load into a new or emptied table (a first
    import, every test database) leaves them saying "empty", and PostgreSQL then checks
    every row of the source against the whole list instead of probing the unique index:
    5.6 s per look-up at 70,000 patients, 9 minutes for Diabetes 130. ANALYZE inside the
    transaction samples its own new rows; doubling keeps the number of runs logarithmic.
    A role that may not analyze the table gets a server warning, not an error.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    counts: dict[str, tuple[int, int]] = session.info.setdefault("vc_inserted_rows", {})
    total, analyzed_at = counts.get(table, (0, 0))
    total += inserted
    if total >= ANALYZE_AFTER and total >= 2 * analyzed_at:
        session.execute(text(f"ANALYZE {table}"))
        analyzed_at = total
    counts[table] = (total, analyzed_at)


def store_patients(
    session: Session,
    records: Sequence[PatientRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
) -> None:
    """Insert new patients; a ref or MRN already known counts as a duplicate (linked),
    unless the two disagree on the birth date (:data:`_IDENTITY_CONFLICT`)."""
    counts = report.count("patient")
    if not records:
        return
    counts.received += len(records)
    resolver.load_patients(r.ref for r in records)
    cipher = resolver.cipher
    fresh: list[tuple[PatientRecord, str | None]] = []
    pending: set[str] = set()
    by_mrn: dict[str, PatientRecord] = {}  # mrn hash -> first new patient in this batch
    newer: dict[str, PatientRecord] = {}  # known ref -> its latest version in this batch
    for rec in records:
        if rec.ref in resolver.patients or rec.ref in pending:
            if rec.ref in resolver.patients and is_newer(rec.version, newer.get(rec.ref)):
                if rec.ref in newer:
                    counts.duplicates += 1  # superseded within the batch
                newer[rec.ref] = rec
                continue
            counts.duplicates += 1
            continue
        mrn_hmac = cipher.mrn_hash(rec.mrn) if rec.mrn else None
        if mrn_hmac is not None and mrn_hmac in by_mrn:
            fresh.append((rec, None))  # linked below, once the first one has an id
            continue
        pending.add(rec.ref)
        if mrn_hmac is not None:
            by_mrn[mrn_hmac] = rec
        fresh.append((rec, mrn_hmac))
    # Same person already known (from any source) by MRN: link, do not duplicate.
    known_mrn: dict[str, int] = {}
    for mrn_chunk in chunks(sorted(by_mrn)):
        found = session.execute(
            select(Patient.mrn_hmac, Patient.id).where(Patient.mrn_hmac.in_(mrn_chunk))
        )
        known_mrn.update({mac: pid for mac, pid in found if mac is not None})
    resolver.load_births(known_mrn.values())

    def conflicts(rec: PatientRecord, mrn_hmac: str) -> bool:
        """The record's birth date differs from that of the patient its MRN names."""
        if mrn_hmac in known_mrn:
            born = resolver.births.get(known_mrn[mrn_hmac])
        else:
            born = by_mrn[mrn_hmac].birth_date
        if not contradicts(rec.birth_date, born):
            return False
        counts.received -= 1  # counted once, as quarantined
        reject("patient", rec.source_ref or rec.ref, "identity_conflict", _IDENTITY_CONFLICT, rec)
        return True

    rows: list[dict[str, Any]] = []
    links: list[tuple[PatientRecord, str]] = []  # records linked to another by their MRN
    for rec, mrn_hmac in fresh:
        if mrn_hmac is None and rec.mrn:  # a further record of an MRN new in this batch
            mac = cipher.mrn_hash(rec.mrn)
            if not conflicts(rec, mac):
                counts.duplicates += 1
                links.append((rec, mac))
        elif mrn_hmac is None or mrn_hmac not in known_mrn:
            rows.append(_patient_row(rec, mrn_hmac, resolver.source, cipher))
        elif not conflicts(rec, mrn_hmac):
            resolver.patients[rec.ref] = known_mrn[mrn_hmac]
            counts.duplicates += 1
    insert_rows(session, Patient, rows)
    resolver.forget_missing_patients()
    resolver.load_patients(r["source_ref"] for r in rows)
    counts.stored += len(rows)
    report.patients.update(resolver.patients[r["source_ref"]] for r in rows)
    for rec, mac in links:  # batch-internal MRN links: to the stored or the new patient
        linked = known_mrn.get(mac, resolver.patients.get(by_mrn[mac].ref))
        if linked is not None:
            resolver.patients[rec.ref] = linked
    for rec, _ in fresh:
        if rec.birth_date is not None and rec.ref in resolver.patients:
            resolver.births[resolver.patients[rec.ref]] = rec.birth_date
    if newer:
        _update_patients(session, newer, resolver, report)


# Why a new patient record is not linked to the patient its MRN names.
_IDENTITY_CONFLICT = (
    "its MRN is that of another patient record with a different birth date, so the two"
    " were not merged: two people can share an MRN (two assigning authorities, a typing"
    " error), and merging them would mix their data and risks; correct the identity in"
    " the source and send the record again"
)


def is_newer(version: str | None, than: Any) -> bool:
    """Whether ``version`` is set and later than ``than`` (a record, a text or None)."""
    other = getattr(than, "version", than)
    return version is not None and (other is None or version > other)


def _update_patients(
    session: Session, records: dict[str, PatientRecord], resolver: Resolver, report: IngestReport
) -> None:
    """Replace stored patients by the newer versions in ``records`` (ref -> record).

    An equal or older version changes nothing (a duplicate), so re-ingesting a message
    or resource, or receiving an old one late, never overwrites newer data.
    """
    counts = report.count("patient")
    ids = {resolver.patients[ref]: rec for ref, rec in records.items()}
    stored = {
        row.id: row
        for row in session.execute(
            select(
                Patient.id,
                Patient.public_id,
                Patient.source_version,
                Patient.sex,
                Patient.identifiers_enc,
                Patient.key_id,
                Patient.mrn_hmac,
            ).where(Patient.id.in_(ids))
        )
    }
    changes: list[dict[str, Any]] = []
    resolver.load_births(ids)
    births_before = {pid: resolver.births.get(pid) for pid in ids}
    for pid, rec in ids.items():
        public_id, version = stored[pid].public_id, stored[pid].source_version
        if not is_newer(rec.version, version):
            fill = _fill_missing(rec, stored[pid], resolver) if resolver.source == "hl7v2" else None
            if fill is None:
                counts.duplicates += 1
            else:
                changes.append(fill)
            continue
        if rec.absent:
            rec = _keep_absent(rec, stored[pid], resolver.cipher)
        identifiers = rec.identifiers()
        blob, key_id = (
            resolver.cipher.encrypt(identifiers, context=f"patient:{public_id}")
            if identifiers
            else (None, None)
        )
        changes.append(
            {
                "id": pid,
                "sex": rec.sex,
                "identifiers_enc": blob,
                "key_id": key_id,
                "mrn_hmac": resolver.cipher.mrn_hash(rec.mrn) if rec.mrn else None,
                "source_version": rec.version,
            }
        )
        if rec.birth_date is not None:
            resolver.births[pid] = rec.birth_date
        else:
            resolver.births.pop(pid, None)
    if changes:
        session.execute(update(Patient), changes)
        counts.stored += len(changes)
        report.patients.update(c["id"] for c in changes)
        report.updated["patient"] += len(changes)
        moved = {
            c["id"]: (births_before[c["id"]], resolver.births.get(c["id"]))
            for c in changes
            if births_before[c["id"]] != resolver.births.get(c["id"])
        }
        _follow_birth_dates(session, moved)
        # The patient's sex is a feature: their stays in progress are to be rescored.
        report.touched_encounters.update(
            session.scalars(
                select(Encounter.id).where(
                    Encounter.patient_id.in_([c["id"] for c in changes]),
                    Encounter.in_progress,
                )
            )
        )


def _follow_birth_dates(
    session: Session, moved: dict[int, tuple[date | None, date | None]]
) -> None:
    """Ages of the stays of patients whose birth date changed (patient id -> (before,
    after)) recomputed from the new one, None when it was deleted.

    Why: FHIR and HL7 v2 give a birth date, never an age, so ingestion stores each stay's
    age at admission from the birth date (:func:`_with_age`). A newer version that
    corrects or deletes the birth date (FHIR, an HL7 PID-7 of ``""``) left those ages as
    they were: the model and the population's age rule went on reading an age whose
    source the sender had withdrawn. Only ages that are the old birth date's (or unknown)
    follow; an age the source gave itself (PhysioNet's Age) stays.
    """
    if not moved:
        return
    changes: list[dict[str, Any]] = []
    for chunk in chunks(sorted(moved)):
        rows = session.execute(
            select(
                Encounter.id, Encounter.patient_id, Encounter.admitted_at, Encounter.age_years
            ).where(Encounter.patient_id.in_(chunk))
        )
        for eid, pid, admitted, age in rows:
            before, after = moved[pid]
            if age is not None and age != age_at(before, admitted):
                continue  # not the old birth date's: the source's own age
            new = plausible_age(after, admitted)  # a placeholder 1800 is no age
            if new != age:
                changes.append({"id": eid, "age_years": new})
    if changes:
        session.execute(update(Encounter), changes)


def _fill_missing(rec: PatientRecord, row: Any, resolver: Resolver) -> dict[str, Any] | None:
    """The update that fills, from an older HL7 ADT, what the stored patient lacks; None
    when it lacks nothing this record has.

    An A03 arriving before its A01 creates the patient from a PID that may hold only the
    MRN; the A01, older by MSH-7, then changed nothing, and the sex (a model feature),
    name and birth date stayed unknown for good. Values stored are never replaced.
    """
    old = _stored_identifiers(row, resolver.cipher)
    if old is None:
        return None  # what is stored cannot be read: it cannot be merged either
    sex = row.sex if row.sex != "unknown" else rec.sex
    identifiers = {**rec.identifiers(), **old}
    if sex == row.sex and identifiers == old:
        return None
    if "birth_date" in identifiers:
        resolver.births[row.id] = date.fromisoformat(identifiers["birth_date"])
    blob, key_id = resolver.cipher.encrypt(identifiers, context=f"patient:{row.public_id}")
    return {
        "id": row.id,
        "sex": sex,
        "identifiers_enc": blob,
        "key_id": key_id,
        "mrn_hmac": row.mrn_hmac,
        "source_version": row.source_version,  # the stored version stays the newest
    }


def _stored_identifiers(row: Any, cipher: FieldCipher) -> dict[str, str] | None:
    """A stored patient's decrypted identifiers: empty when none are stored, None when
    they cannot be decrypted (a retired key)."""
    if row.identifiers_enc is None or row.key_id is None:
        return {}
    try:
        found: dict[str, str] = cipher.decrypt(
            row.identifiers_enc, row.key_id, context=f"patient:{row.public_id}"
        )
    except ValueError:
        return None
    return found


def _keep_absent(rec: PatientRecord, row: Any, cipher: FieldCipher) -> PatientRecord:
    """``rec`` with the stored values of the fields its source did not send.

    A stored payload that cannot be decrypted (a retired key) keeps nothing of it: the
    newer version is stored as sent, as before.
    """
    kept: dict[str, Any] = {}
    if "sex" in rec.absent:
        kept["sex"] = row.sex
    wanted = rec.absent & {"name", "birth_date"}
    if wanted:
        old = _stored_identifiers(row, cipher) or {}
        if "name" in wanted and old.get("name"):
            kept["name"] = old["name"]
        if "birth_date" in wanted and old.get("birth_date"):
            kept["birth_date"] = date.fromisoformat(old["birth_date"])
    return replace(rec, **kept)


def _patient_row(
    rec: PatientRecord, mrn_hmac: str | None, source: str, cipher: FieldCipher
) -> dict[str, Any]:
    public_id = new_public_id()
    identifiers = rec.identifiers()
    blob, key_id = (
        cipher.encrypt(identifiers, context=f"patient:{public_id}") if identifiers else (None, None)
    )
    return {
        "public_id": public_id,
        "source": source,
        "source_ref": rec.ref,
        "source_version": rec.version,
        "sex": rec.sex,
        "identifiers_enc": blob,
        "key_id": key_id,
        "mrn_hmac": mrn_hmac,
    }


_UNORDERED_REOPEN = (
    'the stay\'s discharge was deleted (HL7 PV1-45 "" or a FHIR Encounter in progress)'
    " without a message time or version (MSH-7, meta.versionId or meta.lastUpdated) to"
    " order it after the discharge; the stay was left as it is"
)


def store_encounters(
    session: Session,
    records: Sequence[EncounterRecord],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: Any,
) -> None:
    """Insert new encounters; a known one counts as a duplicate, but a discharge time
    completes it (an ADT^A03 or an outcome file closes a stay opened earlier), unless
    the stay's discharge was cancelled by a message newer than it (an ADT^A13 after the
    same A03, resent or imported again, keeps the stay in progress)."""
    counts = report.count("encounter")
    if not records:
        return
    stored_discharge = resolver.load_encounters(r.ref for r in records)
    resolver.load_patients(r.patient_ref for r in records)
    # Birth dates of the stays' patients: the before-birth rule, and the age at admission
    # of a stay whose source gives none (see _with_age).
    patient_ids = {known[1] for r in records if (known := resolver.encounters.get(r.ref))}
    patient_ids |= {p for r in records if (p := resolver.patients.get(r.patient_ref)) is not None}
    resolver.load_births(patient_ids)
    new: dict[str, dict[str, Any]] = {}
    completions: dict[int, Any] = {}
    # encounter id -> version; and the version of the cancellation of its discharge
    versions, cancelled = _stored_versions(session, records, resolver)
    updates: dict[int, EncounterRecord] = {}
    for rec in records:
        where = rec.source_ref or rec.ref
        known = resolver.encounters.get(rec.ref)
        if known is not None and is_newer(rec.version, versions.get(known[0])):
            try:
                check_encounter(rec, now=now, born_on=resolver.births.get(known[1]))
            except Invalid as exc:
                reject("encounter", where, exc.code, str(exc), rec, patient_id=known[1])
                continue
            rec = _with_age(rec, resolver.births.get(known[1]))
            rec = _plausible_descriptors(rec, where, reject, patient_id=known[1])
            counts.received += 1
            if known[0] in updates:
                counts.duplicates += 1  # superseded by a newer version in this batch
            updates[known[0]] = rec
            versions[known[0]] = rec.version
            report.patients.add(known[1])
            continue
        if (
            known is not None
            and rec.in_progress_stated
            and rec.version is None
            and stored_discharge.get(rec.ref) is not None
        ):
            # As an A13 without MSH-7: it cannot be ordered after the discharge, and
            # counting it as a duplicate would drop the sender's statement unseen.
            reject(
                "encounter", where, "no_message_time", _UNORDERED_REOPEN, rec, patient_id=known[1]
            )
            continue
        if known is not None or rec.ref in new:
            counts.received += 1
            counts.duplicates += 1
            if rec.discharged_at is None:
                continue
            if (
                known is not None
                and stored_discharge.get(rec.ref) is None
                and (known[0] not in cancelled or is_newer(rec.version, cancelled[known[0]]))
            ):
                completions[known[0]] = rec.discharged_at
                stored_discharge[rec.ref] = rec.discharged_at
                report.patients.add(known[1])
            elif rec.ref in new and new[rec.ref]["discharged_at"] is None:
                new[rec.ref]["discharged_at"] = rec.discharged_at
            continue
        patient_id = resolver.patients.get(rec.patient_ref)
        if patient_id is None:
            reject(
                "encounter",
                where,
                "unknown_patient",
                "encounter refers to a patient that is not known",
                rec,
            )
            continue
        try:
            check_encounter(rec, now=now, born_on=resolver.births.get(patient_id))
        except Invalid as exc:
            reject("encounter", where, exc.code, str(exc), rec, patient_id=patient_id)
            continue
        rec = _with_age(rec, resolver.births.get(patient_id))
        rec = _plausible_descriptors(rec, where, reject, patient_id=patient_id)
        counts.received += 1
        new[rec.ref] = {
            "public_id": new_public_id(),
            "patient_id": patient_id,
            "source": resolver.source,
            "source_ref": rec.ref,
            "kind": rec.kind,
            "unit": rec.unit,
            "admission_source": rec.admission_source,
            "admitted_at": rec.admitted_at,
            "discharged_at": rec.discharged_at,
            "age_years": rec.age_years,
            "height_cm": rec.height_cm,
            "weight_kg": rec.weight_kg,
            "attributes": rec.attributes,
            "source_version": rec.version,
        }
    rows = list(new.values())
    insert_rows(session, Encounter, rows)
    resolver.forget_missing_encounters()
    resolver.load_encounters(new)
    counts.stored += len(rows)
    report.patients.update(row["patient_id"] for row in rows)
    if completions:
        session.execute(
            update(Encounter),
            [{"id": eid, "discharged_at": at} for eid, at in completions.items()],
        )
    if updates:
        session.execute(update(Encounter), [_encounter_change(i, r) for i, r in updates.items()])
        counts.stored += len(updates)
        report.updated["encounter"] += len(updates)
        # Its unit, age, weight or admission time are features: rescore (if in progress).
        report.touched_encounters.update(updates)


def _with_age(rec: EncounterRecord, born: date | None) -> EncounterRecord:
    """The stay with its age at admission from the patient's birth date when the source
    gives no age (FHIR and HL7 v2 carry a birth date, never an encounter age).

    Why: age is a model input and the population's rule (no child is scored). Stored
    without it, every FHIR or HL7 stay was scored with its age imputed, and a child's stay
    passed the population's age rule as "age unknown", while the CDS Hooks card computed
    the age from the same birth date.
    """
    if rec.age_years is not None or born is None:
        return rec
    return replace(rec, age_years=age_at(born, rec.admitted_at))


def _plausible_descriptors(
    rec: EncounterRecord, where: str, reject: Reject, *, patient_id: int
) -> EncounterRecord:
    """The stay without implausible descriptors, each of them quarantined on its own
    (kind ``descriptor``): the stay itself is stored."""
    rec, dropped = drop_implausible_descriptors(rec)
    for name, value, exc in dropped:
        raw = {"encounter": rec.ref, "field": name, "value": value}
        reject("descriptor", f"{where} {name}", exc.code, str(exc), raw, patient_id=patient_id)
    return rec


def _stored_versions(
    session: Session, records: Sequence[EncounterRecord], resolver: Resolver
) -> tuple[dict[int, str | None], dict[int, str]]:
    """Stored versions of the known encounters that records refer to, and the version of
    the message that cancelled the discharge of those whose discharge was cancelled."""
    ids = sorted({known[0] for r in records if (known := resolver.encounters.get(r.ref))})
    found: dict[int, str | None] = {}
    cancelled: dict[int, str] = {}
    for chunk in chunks(ids):
        rows = session.execute(
            select(
                Encounter.id, Encounter.source_version, Encounter.discharge_cancelled_version
            ).where(Encounter.id.in_(chunk))
        )
        for eid, version, cancelled_version in rows:
            found[eid] = version
            if cancelled_version is not None:
                cancelled[eid] = cancelled_version
    return found, cancelled


def _encounter_change(encounter_id: int, rec: EncounterRecord) -> dict[str, Any]:
    """The columns a newer version replaces; what it leaves out (None) is kept, what it
    deletes (``rec.cleared``) becomes none."""
    change: dict[str, Any] = {
        "id": encounter_id,
        "kind": rec.kind,
        "source_version": rec.version,
    }
    optional = {
        "admitted_at": rec.admitted_at if rec.admission_known else None,
        "discharged_at": rec.discharged_at,
        "unit": rec.unit,
        "admission_source": rec.admission_source,
        "age_years": rec.age_years,
        "height_cm": rec.height_cm,
        "weight_kg": rec.weight_kg,
        "attributes": rec.attributes,
    }
    change.update({k: v for k, v in optional.items() if v is not None})
    change.update(dict.fromkeys(rec.cleared))  # deleted by the source: none from now on
    return change
