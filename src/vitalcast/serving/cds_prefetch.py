"""The data a CDS Hooks request carries, checked before anything is scored.

The product rule for bad input is a 4xx that says what was wrong and where, never a 500,
never a silent drop, and no patient identifier in the message. Taken at face value, a
prefetch value of the wrong shape either crashed the service (a list where a Bundle was
expected) or was scored as if it were absent or empty (a Patient that is a string, a
Bundle whose ``entry`` is a string, a birth date that is not a date): a risk without the
patient's age, or without the stay's observations, with nothing saying so.

So, for the keys of the service's prefetch template (:data:`PREFETCH`):

- a value is ``null`` (the EHR has no data), an OperationOutcome or absent (the EHR did not
  satisfy the key; the service then reads ``fhirServer`` or answers 412, as CDS Hooks 2.0
  prescribes), or the resource the template asks for: a Patient for ``patient``, a
  search Bundle whose entries hold the searched type (or OperationOutcomes) for the
  searches. Anything else is a malformed request, answered 400 with the place of every
  problem; it is not treated as "not satisfied", which would hide the client's error
  behind a read of ``fhirServer`` or a misleading 412;
- the prefetched Patient must be the patient in context and must pass the FHIR ingestion
  adapter, plus the checks the adapter leaves to the store (gender code, a birth date that
  is not in the future), because its age and sex are model features;
- Observations the adapter rejects are not an error (EHR searches return many
  observations vitalcast does not use), but those of a kind the model uses are counted,
  and the card says how many were left out (:func:`counts_as_left_out`).

Messages quote FHIR paths and rule names, never values: a value may be a name, an
identifier or a birth date.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.records import PatientRecord, RecordBatch, Rejected
from vitalcast.ingest.sources.fhir_map import pick_code
from vitalcast.serving.cds_fhir import bundle_problems

# The prefetch keys of the discovery document and the resource type each one holds.
PREFETCH = {"patient": "Patient", "encounters": "Encounter", "observations": "Observation"}
# FHIR R4 AdministrativeGender, a required binding; the validator does not enforce it.
_GENDERS = frozenset({"male", "female", "other", "unknown"})
# Rejections that are not data: withdrawn results and results the EHR says are absent.
_NOT_MEASUREMENTS = frozenset({"entered_in_error", "cancelled", "data_absent"})
_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")
_COMPONENT = re.compile(r"\.component\[(\d+)\]")
_QUOTED = re.compile(r"\s*(?:'[^']*'|\"[^\"]*\")")


def parse_resources(resources: list[dict[str, Any]]) -> RecordBatch:
    """Resources through the same FHIR adapter as ingested files.

    Resource ``i`` is ``Bundle.entry[i]`` of the document, which :func:`entry_index` reads
    back from a record's or a rejection's location.
    """
    from vitalcast.ingest.sources.fhir import parse_document

    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    return parse_document(json.dumps(bundle).encode(), "cds-request").batch


def entry_index(location: str) -> int | None:
    """The index of the resource in :func:`parse_resources`'s input a location names."""
    match = _ENTRY.search(location)
    return int(match.group(1)) if match else None


def rejection_text(rejected: Rejected, resource_type: str) -> str:
    """Why the adapter rejected a resource, as FHIR paths and rules without values.

    Validation messages are FHIR paths with the validator's message (which carries no
    input); the adapter's own messages quote the offending value, which is cut out.
    """
    if rejected.reason_code == "invalid_resource":
        text = rejected.reason.replace(rejected.location, resource_type)
    else:
        text = _QUOTED.sub("", rejected.reason)
    return text[:300]


def read_patient(resource: dict[str, Any], today: date) -> tuple[PatientRecord | None, list[str]]:
    """The Patient as the adapter maps it, or what makes it unusable (paths, no values)."""
    batch = parse_resources([resource])
    problems = [rejection_text(r, "Patient") for r in batch.rejected]
    gender = resource.get("gender")
    if gender is not None and (not isinstance(gender, str) or gender not in _GENDERS):
        problems.append("Patient.gender: must be male, female, other or unknown")
    record = batch.patients[0] if batch.patients and not problems else None
    if record is not None and record.birth_date is not None and record.birth_date > today:
        problems.append("Patient.birthDate: is in the future")
        record = None
    return record, problems


def prefetch_problems(prefetch: dict[str, Any], patient_id: str | None) -> list[dict[str, Any]]:
    """Every shape problem of the prefetch values of :data:`PREFETCH`, as ``loc``/``msg``.

    ``patient_id`` is ``context.patientId`` when valid (else the Patient's id is not
    compared). Keys outside the template are not read and not checked.
    """
    problems: list[dict[str, Any]] = []
    for key, resource_type in PREFETCH.items():
        value = prefetch.get(key)
        if value is None:
            continue
        loc: list[Any] = ["body", "prefetch", key]
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            problems.append({"loc": loc, "msg": "must be a FHIR resource object or null"})
            continue
        if value["resourceType"] == "OperationOutcome":
            continue
        if key == "patient":
            problems += _patient_problems(value, loc, patient_id)
            continue
        if value["resourceType"] != "Bundle":
            problems.append({"loc": loc, "msg": "must be a search Bundle (or null)"})
            continue
        problems += [{"loc": loc + where, "msg": msg} for where, msg in bundle_problems(value)]
        entries = value.get("entry")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            found = entry.get("resource") if isinstance(entry, dict) else None
            kind = found.get("resourceType") if isinstance(found, dict) else None
            if isinstance(kind, str) and kind not in (resource_type, "OperationOutcome"):
                problems.append(
                    {
                        "loc": [*loc, "entry", i, "resource", "resourceType"],
                        "msg": f"must be {resource_type} (or OperationOutcome)",
                    }
                )
    return problems


def _patient_problems(
    value: dict[str, Any], loc: list[Any], patient_id: str | None
) -> list[dict[str, Any]]:
    if value["resourceType"] != "Patient":
        return [{"loc": loc, "msg": "must be a Patient resource (or null)"}]
    if patient_id is not None and value.get("id") != patient_id:
        return [{"loc": [*loc, "id"], "msg": "must be the patient in context (context.patientId)"}]
    _record, problems = read_patient(value, date.today())
    return [{"loc": loc, "msg": msg} for msg in problems]


def counts_as_left_out(rejected: Rejected, resources: list[dict[str, Any]]) -> bool:
    """Whether an Observation the adapter rejected is data the score goes without.

    ``resources`` is what :func:`parse_resources` was given. Not counted: withdrawn
    results (entered in error, cancelled), results the EHR marks absent, a panel's own
    slot when its values are its components, and observations whose code vitalcast does
    not use (an EHR's newest observations are mostly of such codes). Counted: anything
    else whose code is in the vocabulary, or whose code cannot be told.
    """
    if rejected.reason_code in _NOT_MEASUREMENTS:
        return False
    index = entry_index(rejected.location)
    found = resources[index] if index is not None and index < len(resources) else None
    resource: dict[str, Any] = found if isinstance(found, dict) else {}
    raw_components = resource.get("component")
    components: list[Any] = raw_components if isinstance(raw_components, list) else []
    # After the resource's key "(Observation/<id>)": an id cannot fake a component.
    component = _COMPONENT.search(rejected.location.rsplit(")", 1)[-1])
    if component is not None:
        slot = int(component.group(1))
        holders = components[slot : slot + 1]
    elif rejected.reason_code == "invalid_resource":
        holders = [resource, *components]  # rejected once for all its values
    elif rejected.reason_code == "no_value" and _is_panel(resource):
        return False
    else:
        holders = [resource]
    codes = [_code(holder) for holder in holders] or [None]
    return any(code is None or code in BY_CODE for code in codes)


def _is_panel(resource: dict[str, Any]) -> bool:
    """A panel whose values are its components or its members, with none of its own."""
    own = any(k.startswith("value") for k in resource) or "dataAbsentReason" in resource
    return not own and bool(resource.get("component") or resource.get("hasMember"))


def _code(holder: Any) -> str | None:
    """The code the adapter would pick, or None when the concept is not well formed."""
    concept = holder.get("code") if isinstance(holder, dict) else None
    if not isinstance(concept, dict):
        return None
    try:
        return pick_code(concept)
    except (AttributeError, TypeError, KeyError, IndexError):
        return None
