"""The checks every batch passes before anything is stored: text PostgreSQL can hold and
lengths its columns take.

One place for every source (FHIR, HL7 v2, CSV, MQTT, HTTP), run by
:func:`~vitalcast.ingest.service.store_batch` before any lookup or write: a value that
fails here used to fail the whole unit of work in the database, whichever column or
lookup it reached first. What fails is quarantined through the store's ``reject``.
"""

from __future__ import annotations

from typing import Any, Protocol

from vitalcast.clinical.records import ObservationRecord, RecordBatch
from vitalcast.clinical.tables import Condition, Encounter, ImagingStudy, Observation, Patient
from vitalcast.ingest.validate import unstorable_text


class Reject(Protocol):
    def __call__(
        self, kind: str, where: str, reason_code: str, reason: str, raw: Any, **extra: Any
    ) -> None: ...


def observation_location(rec: ObservationRecord) -> str:
    """Where a reading is reported and quarantined: its source reference, else its code.
    Never its time: a date of care is an identifier, and locations are printed in ingest
    reports (the quarantined item keeps the reading, encrypted, for review)."""
    return rec.source_ref or f"observation {rec.code}"


# The text fields of each list of a batch that the store keeps in a length-limited
# column, with that column. A reference is checked against the column it is looked up in.
_LIMITED: dict[str, tuple[tuple[str, Any], ...]] = {
    "patients": (("ref", Patient.source_ref), ("version", Patient.source_version)),
    "encounters": (
        ("ref", Encounter.source_ref),
        ("patient_ref", Patient.source_ref),
        ("unit", Encounter.unit),
        ("admission_source", Encounter.admission_source),
        ("version", Encounter.source_version),
    ),
    "observations": (
        ("patient_ref", Patient.source_ref),
        ("encounter_ref", Encounter.source_ref),
        ("value_text", Observation.value_text),
        ("device_id", Observation.device_id),
        ("version", Observation.source_version),
    ),
    "conditions": (
        ("patient_ref", Patient.source_ref),
        ("encounter_ref", Encounter.source_ref),
        ("code", Condition.code),
        ("system", Condition.system),
        ("display", Condition.display),
    ),
    "imaging_studies": (
        ("patient_ref", Patient.source_ref),
        ("encounter_ref", Encounter.source_ref),
        ("study_uid", ImagingStudy.study_uid),
        ("modality", ImagingStudy.modality),
        ("body_part", ImagingStudy.body_part),
        ("description", ImagingStudy.description),
    ),
    "outcomes": (("patient_ref", Patient.source_ref), ("encounter_ref", Encounter.source_ref)),
    "withdrawals": (("ref", Encounter.source_ref), ("version", Encounter.source_version)),
    "discharge_cancellations": (
        ("ref", Encounter.source_ref),
        ("version", Encounter.source_version),
    ),
    "retractions": (("patient_ref", Patient.source_ref), ("version", Observation.source_version)),
}
# The record kind (of the report and the quarantine) of each list of a batch.
_BATCH_LISTS = {
    "patients": "patient",
    "encounters": "encounter",
    "observations": "observation",
    "conditions": "condition",
    "imaging_studies": "imaging_study",
    "outcomes": "outcome",
    "withdrawals": "encounter",  # an Encounter version that withdraws a stay
    "discharge_cancellations": "encounter",  # an HL7 A13 that reopens a stay
    "retractions": "observation",  # a result the source took back (HL7 OBX-11 W)
}


def storable_text(batch: RecordBatch, reject: Reject) -> RecordBatch:
    """The batch without records holding text PostgreSQL cannot store (a NUL character,
    an unpaired surrogate); those are quarantined as ``invalid_text``, naming the field.

    One check for every source, before anything is written or looked up: such a value
    failed the whole unit of work in the database before (a FHIR file with its valid
    patient, an MQTT batch retried until the consumer exited, an HL7 message answered
    AR), whichever column or lookup it reached first.
    """
    out = RecordBatch(received=batch.received)
    for attr, kind in _BATCH_LISTS.items():
        kept = getattr(out, attr)
        for rec in getattr(batch, attr):
            problem = unstorable_text(rec)
            if problem is None:
                kept.append(rec)
                continue
            is_obs = isinstance(rec, ObservationRecord)
            reject(
                kind,
                observation_location(rec) if is_obs else rec.source_ref or kind,
                "invalid_text",
                f"{kind} {problem}; it cannot be stored",
                rec,
                code=rec.code if is_obs else None,
            )
    return out


def within_limits(batch: RecordBatch, reject: Reject) -> RecordBatch:
    """The batch without records whose text is longer than its column; those are
    quarantined as ``too_long``, naming the field and the limit.

    One check for every source, before anything is written: an over-long value (a FHIR
    id of 250 characters, a CSV cell of 400) otherwise failed the whole unit of work in
    the database, and truncating it instead would store another patient's reference or
    a cut code or text. Limits come from the tables, so they cannot drift from them.
    """
    out = RecordBatch(received=batch.received)
    for attr, fields in _LIMITED.items():
        kind = _BATCH_LISTS[attr]
        limits = [(name, int(column.type.length)) for name, column in fields]
        kept = getattr(out, attr)
        for rec in getattr(batch, attr):
            problem = next(
                (
                    (name, len(value), limit)
                    for name, limit in limits
                    if (value := getattr(rec, name)) is not None and len(value) > limit
                ),
                None,
            )
            if problem is None:
                kept.append(rec)
                continue
            name, length, limit = problem
            reject(
                kind,
                rec.source_ref or kind,
                "too_long",
                f"{kind} {name} is {length} characters; at most {limit} are stored",
                rec,
            )
    return out
