"""Write canonical records as FHIR R4 bulk-data ndjson (Patient, Encounter, Observation).

One resource per line, one file per resource type, as the FHIR Bulk Data Access spec
lays out an export (https://hl7.org/fhir/uv/bulkdata/export.html). Observations carry a
LOINC coding and a UCUM ``valueQuantity`` (https://hl7.org/fhir/R4/observation.html);
vital signs get the ``vital-signs`` category, the rest ``laboratory``. Encounters carry the
ICU unit as their location and, when the stay is over, a discharge disposition of
``exp`` (expired) or ``home``, which is how a FHIR feed says who died in hospital.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from vitalcast.clinical.codes import BY_CODE, LOINC, VariableSpec
from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    PatientRecord,
    RecordBatch,
)

UCUM = "http://unitsofmeasure.org"
MRN_SYSTEM = "urn:vitalcast:synth:mrn"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"


def _id(ref: str) -> str:
    """FHIR ids allow [A-Za-z0-9-.]{1,64}: ``synth:200001`` -> ``synth-200001``."""
    return ref.replace(":", "-")


def _instant(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def patient_resource(rec: PatientRecord) -> dict[str, Any]:
    """A FHIR Patient with the synthetic identifiers."""
    res: dict[str, Any] = {"resourceType": "Patient", "id": _id(rec.ref), "gender": rec.sex}
    if rec.mrn:
        res["identifier"] = [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": MRN_SYSTEM,
                "value": rec.mrn,
            }
        ]
    if rec.name:
        given, _, family = rec.name.rpartition(" ")
        res["name"] = [{"use": "official", "family": family, "given": given.split()}]
    if rec.birth_date:
        res["birthDate"] = rec.birth_date.isoformat()
    telecom = []
    if rec.phone:
        telecom.append({"system": "phone", "value": rec.phone, "use": "home"})
    if rec.email:
        telecom.append({"system": "email", "value": rec.email})
    if telecom:
        res["telecom"] = telecom
    if rec.address:
        res["address"] = [{"use": "home", "text": rec.address}]
    return res


def encounter_resource(rec: EncounterRecord, died: bool | None) -> dict[str, Any]:
    """A FHIR Encounter for an ICU stay (``died`` None while the outcome is unknown)."""
    period: dict[str, str] = {"start": _instant(rec.admitted_at)}
    if rec.discharged_at:
        period["end"] = _instant(rec.discharged_at)
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": _id(rec.ref),
        "status": "finished" if rec.discharged_at else "in-progress",
        "class": {"system": _ACT_CODE, "code": "ACUTE", "display": "inpatient acute"},
        "subject": {"reference": f"Patient/{_id(rec.patient_ref)}"},
        "period": period,
    }
    if rec.unit:
        res["location"] = [{"location": {"display": rec.unit}}]
    if died is not None:
        code = "exp" if died else "home"
        res["hospitalization"] = {
            "dischargeDisposition": {"coding": [{"system": _DISPOSITION, "code": code}]}
        }
    return res


def _quantity(spec: VariableSpec, value: float) -> dict[str, Any]:
    return {
        "value": value,
        "unit": spec.display_unit or spec.unit,
        "system": UCUM,
        "code": spec.unit,
    }


def observation_resource(rec: ObservationRecord, n: int) -> dict[str, Any]:
    """A FHIR Observation; ``n`` makes its id unique within the export."""
    spec = BY_CODE[rec.code]
    category = "laboratory" if spec.kind == "lab" else "vital-signs"
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{_id(rec.encounter_ref or rec.patient_ref)}-{n}",
        "status": "final",
        "category": [{"coding": [{"system": _OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": spec.system, "code": spec.code, "display": spec.label}]},
        "subject": {"reference": f"Patient/{_id(rec.patient_ref)}"},
        "effectiveDateTime": _instant(rec.effective_at),
    }
    if spec.system != LOINC:
        res["code"]["text"] = spec.label
    if rec.encounter_ref:
        res["encounter"] = {"reference": f"Encounter/{_id(rec.encounter_ref)}"}
    if rec.value is not None:
        res["valueQuantity"] = _quantity(spec, rec.value)
    elif rec.value_text is not None:
        res["valueString"] = rec.value_text
    return res


def _descriptor_observations(enc: EncounterRecord) -> Iterator[ObservationRecord]:
    """Height and admission weight, which the store keeps on the encounter."""
    for code, value in (("8302-2", enc.height_cm), ("29463-7", enc.weight_kg)):
        if value is not None:
            yield ObservationRecord(
                patient_ref=enc.patient_ref,
                code=code,
                effective_at=enc.admitted_at,
                value=value,
                unit=BY_CODE[code].unit,
                encounter_ref=enc.ref,
            )


def write_fhir_ndjson(batch: RecordBatch, out: Path) -> dict[str, int]:
    """Write ``Patient.ndjson``, ``Encounter.ndjson`` and ``Observation.ndjson`` under ``out``.

    Returns:
        resources written per type.
    """
    out.mkdir(parents=True, exist_ok=True)
    died = {
        o.encounter_ref: o.value == 1.0 for o in batch.outcomes if o.kind == "in_hospital_death"
    }
    counts = {"Patient": 0, "Encounter": 0, "Observation": 0}
    with (out / "Patient.ndjson").open("w", encoding="utf-8") as fh:
        for p in batch.patients:
            fh.write(json.dumps(patient_resource(p), ensure_ascii=False) + "\n")
            counts["Patient"] += 1
    with (out / "Encounter.ndjson").open("w", encoding="utf-8") as fh:
        for e in batch.encounters:
            fh.write(json.dumps(encounter_resource(e, died.get(e.ref))) + "\n")
            counts["Encounter"] += 1
    with (out / "Observation.ndjson").open("w", encoding="utf-8") as fh:
        n = 0
        for e in batch.encounters:
            for obs in _descriptor_observations(e):
                n += 1
                fh.write(json.dumps(observation_resource(obs, n), ensure_ascii=False) + "\n")
        for obs in batch.observations:
            n += 1
            fh.write(json.dumps(observation_resource(obs, n), ensure_ascii=False) + "\n")
        counts["Observation"] = n
    return counts
