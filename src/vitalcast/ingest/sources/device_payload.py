"""Device and API observation payloads: compact JSON or FHIR Observation, bound to patients.

The compact form is ``{"code", "value", "unit", "time"}`` (LOINC code, UCUM unit, ISO 8601
time with an offset), optionally with ``value_text``, an ``id`` (the sender's stable
identity, used for deduplication) and, over HTTP, ``patient``/``encounter`` public ids or
a ``device`` id. Readings that name a device get their patient from the device binding
that covers their measurement time (:func:`attach_devices`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import (
    PUBLIC_ENCOUNTER_REF,
    PUBLIC_PATIENT_REF,
    ObservationRecord,
    RecordBatch,
    Rejected,
)
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.clinical.times import ClinicalDateTime
from vitalcast.ingest.devices import binding_at, load_bindings
from vitalcast.ingest.sources.fhir import is_resource_type, validation_problems
from vitalcast.ingest.sources.fhir_map import map_observation

DEVICE_REF = "device:"  # patient_ref placeholder until the binding is known


class CompactObservation(BaseModel):
    """One compact reading (API and MQTT).

    ``value`` is strictly a JSON number: ``true`` is not a heart rate of 1 and ``"131"``
    is not 131 (lax coercion stored both); infinities, NaN and numbers beyond the float
    range (a 400-digit integer) are refused too. ``time`` needs an offset and a year in
    the clinical range (:mod:`vitalcast.clinical.times`).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    code: str = Field(min_length=1, max_length=64)
    value: StrictFloat | None = Field(None, allow_inf_nan=False)
    value_text: str | None = Field(None, max_length=200)
    unit: str | None = Field(None, max_length=32)
    time: ClinicalDateTime
    id: str | None = Field(None, max_length=200)
    patient: str | None = Field(None, max_length=32)
    encounter: str | None = Field(None, max_length=32)
    device: str | None = Field(None, max_length=64)


def problems(exc: ValidationError, loc: list[str | int]) -> list[dict[str, Any]]:
    """Pydantic errors as ``{loc, msg}`` (input values left out: they may be PHI)."""
    return [{"loc": [*loc, *err["loc"]], "msg": err["msg"]} for err in exc.errors()]


def compact_record(
    item: CompactObservation, where: str, device_id: str | None
) -> ObservationRecord:
    """A record from a validated compact reading; the patient may still be a device."""
    device = device_id or item.device
    patient_ref = PUBLIC_PATIENT_REF + item.patient if item.patient else DEVICE_REF + (device or "")
    return ObservationRecord(
        patient_ref=patient_ref,
        encounter_ref=PUBLIC_ENCOUNTER_REF + item.encounter if item.encounter else None,
        code=item.code,
        effective_at=item.time,
        value=item.value,
        unit=item.unit,
        value_text=item.value_text,
        device_id=device,
        source_ref=where,
        identity=f"{device or patient_ref}|{item.id}" if item.id else None,
    )


def fhir_observation_batch(res: dict[str, Any], where: str, device_id: str | None) -> RecordBatch:
    """Items of a FHIR Observation; ``Patient/<public id>`` subjects, else the device.

    Raises:
        ValidationError: the resource is not a valid FHIR R4B Observation.
    """
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class("Observation").model_validate(res)
    if device_id is not None or not (res.get("subject") or {}).get("reference"):
        res = {**res, "subject": {"reference": "Patient/__device__"}}

    def resolve(ref: str) -> str | None:
        parts = ref.strip().split("/")
        return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 else None

    batch = RecordBatch()
    map_observation(res, where, resolve, batch)
    fixed = []
    for rec in batch.observations:
        _kind, _, pid = rec.patient_ref.partition("/")
        patient_ref = (
            DEVICE_REF + (device_id or "") if pid == "__device__" else PUBLIC_PATIENT_REF + pid
        )
        enc = rec.encounter_ref.partition("/")[2] if rec.encounter_ref else None
        fixed.append(
            replace(
                rec,
                patient_ref=patient_ref,
                encounter_ref=PUBLIC_ENCOUNTER_REF + enc if enc else None,
                device_id=device_id,
            )
        )
    batch.observations = fixed
    return batch


def is_fhir_observation(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("resourceType") == "Observation"


def has_resource_type(obj: Any) -> bool:
    return isinstance(obj, dict) and "resourceType" in obj


__all__ = [
    "DEVICE_REF",
    "CompactObservation",
    "attach_devices",
    "compact_record",
    "fhir_observation_batch",
    "is_resource_type",
    "problems",
    "validation_problems",
]


def attach_devices(session: Session, batch: RecordBatch) -> RecordBatch:
    """Give device readings the patient (and stay) bound at their measurement time.

    Readings of a device unbound at that time are quarantined as ``unbound_device``.
    """
    devices = {
        r.patient_ref.removeprefix(DEVICE_REF)
        for r in batch.observations
        if r.patient_ref.startswith(DEVICE_REF)
    }
    if not devices:
        return _refuse_other_patients_stays(session, batch)
    bindings = load_bindings(session, devices)
    out = RecordBatch(rejected=list(batch.rejected), received=batch.received)
    for rec in batch.observations:
        if not rec.patient_ref.startswith(DEVICE_REF):
            out.observations.append(rec)
            continue
        device = rec.patient_ref.removeprefix(DEVICE_REF)
        bound = binding_at(bindings.get(device, []), rec.effective_at)
        if bound is None:
            out.rejected.append(
                Rejected(
                    rec.source_ref,
                    "unbound_device",
                    f"device {device!r} was bound to no patient at {rec.effective_at.isoformat()}",
                    _raw(rec),
                )
            )
            continue
        out.observations.append(
            replace(
                rec,
                patient_ref=PUBLIC_PATIENT_REF + bound.patient_public_id,
                encounter_ref=rec.encounter_ref
                or (
                    PUBLIC_ENCOUNTER_REF + bound.encounter_public_id
                    if bound.encounter_public_id
                    else None
                ),
            )
        )
    return _refuse_other_patients_stays(session, out)


_OTHER_PATIENTS_STAY = (
    "the stay named (encounter) is not the reading's patient's; nothing of it was stored"
)


def _refuse_other_patients_stays(session: Session, batch: RecordBatch) -> RecordBatch:
    """The batch with readings whose stay belongs to another patient than the one they
    name (or their device is bound to) moved to its rejects.

    Storing follows the stay: such a reading went to the stay's patient, one the sender
    did not name and a unit-bound caller may not see (the unit check reads the named
    patient), and that stay was rescored. An unknown stay is left to ingestion, which
    quarantines it as ``unknown_encounter``.
    """
    stays = {
        r.encounter_ref.removeprefix(PUBLIC_ENCOUNTER_REF)
        for r in batch.observations
        if r.encounter_ref is not None
        and r.encounter_ref.startswith(PUBLIC_ENCOUNTER_REF)
        and r.patient_ref.startswith(PUBLIC_PATIENT_REF)
    }
    if not stays:
        return batch
    rows = session.execute(
        select(Encounter.public_id, Patient.public_id)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(Encounter.public_id.in_(sorted(stays)))
    )
    owners = {stay: owner for stay, owner in rows}
    kept: list[ObservationRecord] = []
    rejected = list(batch.rejected)
    for rec in batch.observations:
        stay = (rec.encounter_ref or "").removeprefix(PUBLIC_ENCOUNTER_REF)
        owner = owners.get(stay)
        if owner is not None and PUBLIC_PATIENT_REF + owner != rec.patient_ref:
            rejected.append(
                Rejected(
                    rec.source_ref, "encounter_of_another_patient", _OTHER_PATIENTS_STAY, _raw(rec)
                )
            )
        else:
            kept.append(rec)
    return replace(batch, observations=kept, rejected=rejected)


def _raw(rec: ObservationRecord) -> str:
    import json
    from dataclasses import asdict

    return json.dumps(asdict(rec), default=str)
