"""Canonical clinical records: what every ingestion adapter produces.

These are plain frozen dataclasses (no SQLAlchemy, no Flask) so that adapters, the
synthetic generator, feature code and Spark workers can all use them. References between
records are *source references* (``patient_ref``, ``encounter_ref``): the ingestion
service resolves them to database ids in one unit of work.

Times are timezone-aware UTC (``_at`` suffix). Values are already in the canonical unit
of their code when a record leaves an adapter (see :mod:`vitalcast.clinical.units`).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

# References to rows already in the store, by public id, whatever source created them
# (device bindings, API payloads). The ingestion resolver understands these prefixes.
PUBLIC_PATIENT_REF = "vitalcast:patient/"
PUBLIC_ENCOUNTER_REF = "vitalcast:encounter/"

Sex = Literal["female", "male", "other", "unknown"]
OutcomeKind = Literal["in_hospital_death", "readmission_30d", "length_of_stay_days"]


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """A person. Direct identifiers are encrypted at rest by the store."""

    ref: str
    sex: Sex = "unknown"
    mrn: str | None = None
    name: str | None = None
    birth_date: date | None = None
    address: str | None = None
    phone: str | None = None
    email: str | None = None
    source_ref: str = ""
    # Sortable version of the source's record (FHIR meta, HL7 MSH-7 of an ADT); a newer
    # version replaces the stored one, an equal or older one changes nothing. None: the
    # source does not version (the first stored record stays).
    version: str | None = None
    # Fields the source left empty ("sex", "name", "birth_date"): an HL7 v2 update (an
    # A03 with a PID of only its MRN) does not send them, which is not "none", so a newer
    # version keeps the stored values of these instead of wiping them.
    absent: frozenset[str] = frozenset()

    def identifiers(self) -> dict[str, str]:
        """The direct identifiers present, as strings (the encrypted payload)."""
        raw = {
            "mrn": self.mrn,
            "name": self.name,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "address": self.address,
            "phone": self.phone,
            "email": self.email,
        }
        return {k: v for k, v in raw.items() if v}


# Encounter fields a source can delete (EncounterRecord.cleared).
DeletableField = Literal["unit", "admission_source"]


@dataclass(frozen=True, slots=True)
class EncounterRecord:
    """A hospital or ICU stay."""

    ref: str
    patient_ref: str
    admitted_at: datetime
    discharged_at: datetime | None = None
    kind: Literal["icu", "inpatient", "emergency", "outpatient"] = "icu"
    unit: str | None = None
    admission_source: str | None = None
    age_years: float | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    attributes: dict[str, Any] | None = None  # tabular facts without a LOINC code
    source_ref: str = ""
    version: str | None = None  # as PatientRecord.version
    # False when admitted_at is a stand-in (an HL7 A03/A08 without PV1-44 uses the event
    # time): an update then keeps the stored admission time.
    admission_known: bool = True
    # The source states that the stay is still going on (a FHIR Encounter ``arrived``,
    # ``triaged``, ``in-progress`` or ``onleave`` without ``period.end``): as the newer
    # version of a discharged stay it cancels that discharge. False when the source only
    # leaves the discharge out (an HL7 A08 need not repeat PV1-45; its ADT^A13 cancels).
    in_progress_stated: bool = False
    # Fields the source deletes (the HL7 v2 null ``""`` in PV1-3 or PV1-14): a newer
    # version sets them to none, where a field left out (None) keeps the stored value.
    cleared: frozenset[DeletableField] = frozenset()


@dataclass(frozen=True, slots=True)
class EncounterWithdrawal:
    """A version of a stay saying it never was one (FHIR ``entered-in-error``,
    ``cancelled``): it withdraws the stored stay when it is newer than the stored
    version, and is quarantined under ``reason_code`` otherwise (no such stay, or a
    version that cannot be ordered after it)."""

    ref: str
    reason_code: str  # "entered_in_error" or "cancelled"
    reason: str  # what the source said, for the report and the quarantine
    source_ref: str = ""
    version: str | None = None  # as EncounterRecord.version


@dataclass(frozen=True, slots=True)
class DischargeCancellation:
    """A version of a stay saying its discharge was cancelled (HL7 ADT^A13): the stay is
    in fact still in progress. It reopens the stored stay when it is newer than the
    stored version (the discharging A03 or a later update), and is quarantined when there
    is no such stay, when the stay was withdrawn (a withdrawal is final) or when it
    cannot be ordered (no version)."""

    ref: str
    source_ref: str = ""
    version: str | None = None  # as EncounterRecord.version


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """One measurement, in the canonical unit of its code."""

    patient_ref: str
    code: str
    effective_at: datetime
    value: float | None = None
    unit: str | None = None
    value_text: str | None = None
    encounter_ref: str | None = None
    device_id: str | None = None
    source_ref: str = ""
    identity: str | None = None  # stable source identity (FHIR Type/id + slot); else content
    version: str | None = None  # as PatientRecord.version (same identity, newer version)

    def dedup_key(self, source: str) -> uuid.UUID:
        """Key that makes re-ingesting the same measurement a no-op.

        128 bits of a SHA-256 (a collision, which would drop a measurement as a duplicate,
        is out of reach at any hospital's volume) in a 16-byte ``uuid`` column: a third of
        the former 40-character text key's index, which ingest writes for every row.
        """
        basis = self.identity or "|".join(
            (
                self.patient_ref,
                self.encounter_ref or "",
                self.code,
                self.effective_at.isoformat(),
                repr(self.value),
                self.value_text or "",
            )
        )
        return identity_key(source, basis)


def identity_key(source: str, basis: str) -> uuid.UUID:
    """The stored dedup key of a measurement with this source identity (see
    :meth:`ObservationRecord.dedup_key`), shared by :class:`ObservationRetraction`."""
    return uuid.UUID(bytes=hashlib.sha256(f"{source}|{basis}".encode()).digest()[:16])


@dataclass(frozen=True, slots=True)
class ObservationRetraction:
    """A newer version of a result saying it must not be used: an HL7 OBX-11 of ``W``
    (wrong), ``D`` (deleted) or ``X`` (cannot be obtained), a FHIR Observation
    ``entered-in-error`` or ``cancelled``. It removes the stored result with the same
    source identity when that result's version is older; otherwise it is quarantined.

    Why: refused like any withdrawn result, it left a value the laboratory had taken
    back (a haemolysed potassium, a result on the wrong patient) in the store, where it
    went on feeding the patient's features and risk.
    """

    patient_ref: str
    identity: str  # as ObservationRecord.identity: the result it retracts
    version: str  # as ObservationRecord.version; a retraction without one is refused
    code: str
    reason_code: str  # the quarantine code when nothing is retracted
    reason: str  # what the source said
    source_ref: str = ""
    raw: str | None = None

    def dedup_key(self, source: str) -> uuid.UUID:
        return identity_key(source, self.identity)


@dataclass(frozen=True, slots=True)
class ConditionRecord:
    """A diagnosis or problem.

    Its onset is a point in time (``onset_at``), or a day alone (``onset_on``) when the
    source gave only a date; never both (see :func:`vitalcast.clinical.times.known_from`).
    """

    patient_ref: str
    code: str
    system: str
    display: str | None = None
    onset_at: datetime | None = None
    encounter_ref: str | None = None
    source_ref: str = ""
    onset_on: date | None = None


@dataclass(frozen=True, slots=True)
class ImagingStudyRecord:
    """An imaging study's metadata (never pixel data)."""

    patient_ref: str
    study_uid: str
    modality: str | None = None
    body_part: str | None = None
    started_at: datetime | None = None
    description: str | None = None
    series_count: int | None = None
    instance_count: int | None = None
    encounter_ref: str | None = None
    source_ref: str = ""
    started_on: date | None = None  # a start known to the day only (started_at is None)
    # The birth date the study's header gives: compared with the matched patient's, so
    # that a study is not attached to another person sharing the MRN; never stored.
    patient_birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """A label: what happened, and when it became known."""

    patient_ref: str
    encounter_ref: str
    kind: OutcomeKind
    value: float
    occurred_at: datetime | None = None
    known_at: datetime | None = None
    source_ref: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input item that was not stored, with why and where."""

    location: str
    reason_code: str
    reason: str
    raw: str | None = None
    kind: str = "observation"  # which record kind the item would have become


@dataclass(slots=True)
class RecordBatch:
    """Everything one unit of input (a file, a message) produced."""

    patients: list[PatientRecord] = field(default_factory=list)
    encounters: list[EncounterRecord] = field(default_factory=list)
    observations: list[ObservationRecord] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    imaging_studies: list[ImagingStudyRecord] = field(default_factory=list)
    outcomes: list[OutcomeRecord] = field(default_factory=list)
    withdrawals: list[EncounterWithdrawal] = field(default_factory=list)
    discharge_cancellations: list[DischargeCancellation] = field(default_factory=list)
    retractions: list[ObservationRetraction] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    received: int = 0  # input items seen (each becomes a record or a rejection)

    def extend(self, other: RecordBatch) -> None:
        """Append another batch's contents to this one."""
        self.patients.extend(other.patients)
        self.encounters.extend(other.encounters)
        self.observations.extend(other.observations)
        self.conditions.extend(other.conditions)
        self.imaging_studies.extend(other.imaging_studies)
        self.outcomes.extend(other.outcomes)
        self.withdrawals.extend(other.withdrawals)
        self.discharge_cancellations.extend(other.discharge_cancellations)
        self.retractions.extend(other.retractions)
        self.rejected.extend(other.rejected)
        self.received += other.received

    def summary(self) -> dict[str, Any]:
        """Counts per record type."""
        return {
            "received": self.received,
            "patients": len(self.patients),
            "encounters": len(self.encounters),
            "observations": len(self.observations),
            "conditions": len(self.conditions),
            "imaging_studies": len(self.imaging_studies),
            "outcomes": len(self.outcomes),
            "withdrawals": len(self.withdrawals),
            "discharge_cancellations": len(self.discharge_cancellations),
            "retractions": len(self.retractions),
            "rejected": len(self.rejected),
        }
