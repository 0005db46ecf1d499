"""FHIR adapter on small hand-made resources: panels, absent data, references, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vitalcast.ingest.sources.fhir import FhirFormatError, parse_bytes

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "male",
    "birthDate": "1950-02-03",
    "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "M-1"}],
}


def _obs(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "meta": {"versionId": "2"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "urn:uuid:aaaa"},
        "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        **extra,
    }


def _bundle(*resources: dict[str, Any], btype: str = "transaction") -> bytes:
    entries = [
        {
            "fullUrl": "urn:uuid:aaaa",
            "resource": PATIENT,
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    entries += [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]
    return json.dumps({"resourceType": "Bundle", "type": btype, "entry": entries}).encode()


def test_bp_panel_components_and_urn_uuid_subject() -> None:
    bp = _obs(
        code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 130,
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "dataAbsentReason": {
                    "coding": [{"code": "asked-unknown", "display": "Asked But Unknown"}]
                },
            },
        ],
    )
    unit = parse_bytes(_bundle(bp), "b.json")
    (sbp,) = unit.batch.observations
    assert (sbp.code, sbp.value, sbp.unit, sbp.patient_ref) == (
        "8480-6",
        130,
        "mm[Hg]",
        "Patient/p1",
    )
    assert sbp.source_ref == "b.json#Bundle.entry[1].resource(Observation/o1).component[0]"
    # The identity spans versions (a new version replaces the row); the version is apart.
    assert sbp.identity == "Observation/o1|component[0]"
    assert sbp.version == "|00000000000000000002"
    assert sbp.effective_at.isoformat() == "2024-05-01T08:00:00+00:00"
    (absent,) = unit.batch.rejected
    assert absent.reason_code == "data_absent"
    assert "Asked But Unknown" in absent.reason
    (patient,) = unit.batch.patients
    assert (patient.ref, patient.mrn, patient.sex) == ("Patient/p1", "M-1", "male")


def test_missing_subject_and_invalid_resource_are_quarantined_with_paths() -> None:
    no_subject = {k: v for k, v in _obs().items() if k != "subject"}
    invalid = _obs(id="o2", valueQuantity={"value": "abc"})
    unit = parse_bytes(_bundle(no_subject, invalid), "b.json")
    reasons = {r.location: r.reason_code for r in unit.batch.rejected}
    assert reasons == {
        "b.json#Bundle.entry[1].resource(Observation/o1)": "missing_subject",
        "b.json#Bundle.entry[2].resource(Observation/o2)": "invalid_resource",
    }
    assert "valueQuantity.value" in unit.batch.rejected[1].reason


def test_ndjson_bad_line_is_one_item() -> None:
    lines = [
        json.dumps(PATIENT),
        "{oops",
        json.dumps(_obs(subject={"reference": "Patient/p1"}, valueQuantity={"value": 70})),
    ]
    unit = parse_bytes("\n".join(lines).encode(), "Observation.ndjson")
    assert len(unit.batch.observations) == 1
    assert [r.location for r in unit.batch.rejected] == ["Observation.ndjson#line[2]"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "malformed JSON at line 1"),
        (b"\xff\x00", "not UTF-8"),
        (b'{"resourceType": "Nonsense"}', "is not a FHIR resource type"),
        (b"[1, 2]", "not a FHIR resource"),
        (_bundle(btype="transaction-response"), "is not ingested"),
    ],
)
def test_unreadable_documents(data: bytes, message: str) -> None:
    with pytest.raises(FhirFormatError, match=message):
        parse_bytes(data, "x.json")


@pytest.mark.parametrize("comparator", ["<", "<=", ">=", ">"])
def test_a_quantity_with_a_comparator_is_not_an_exact_value(comparator: str) -> None:
    """``valueQuantity.comparator`` makes the value a bound (lactate "> 10 mmol/L"):
    stored as the number it would read as exactly 10, so it is quarantined as HL7 SN
    values with a comparator are."""
    quantity = {"value": 10, "comparator": comparator, "unit": "mmol/L"}
    unit = parse_bytes(_bundle(_obs(valueQuantity=quantity)), "b.json")
    assert unit.batch.observations == []
    (rejected,) = unit.batch.rejected
    assert rejected.reason_code == "non_numeric_value"
    assert "comparator" in rejected.reason


def test_a_value_over_a_period_is_placed_at_its_end() -> None:
    """A 24-hour urine output exists only once the 24 hours are over: placed at the
    period's start, a feature computed an hour into it would see the whole total. The
    same holds for a result timed by its DiagnosticReport's period."""
    period = {"start": "2024-05-01T09:00:00+02:00", "end": "2024-05-02T09:00:00+02:00"}
    urine = _obs(
        code={"coding": [{"system": "http://loinc.org", "code": "9187-6"}]},
        effectivePeriod=period,
        valueQuantity={"value": 1200, "unit": "mL"},
    )
    open_ended = _obs(
        id="o2",
        effectivePeriod={"start": "2024-05-01T09:00:00+02:00"},
        valueQuantity={"value": 80, "unit": "/min"},
    )
    by_report = _obs(id="o3", valueQuantity={"value": 81, "unit": "/min"})
    for obs in (urine, open_ended, by_report):
        del obs["effectiveDateTime"]
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "panel"},
        "effectivePeriod": period,
        "result": [{"reference": "urn:uuid:2"}],
    }
    unit = parse_bytes(_bundle(urine, open_ended, by_report, report), "b.json")
    times = [o.effective_at.isoformat() for o in unit.batch.observations]
    assert times == [
        "2024-05-02T07:00:00+00:00",
        "2024-05-01T07:00:00+00:00",
        "2024-05-02T07:00:00+00:00",
    ]


@pytest.mark.parametrize(
    "reference",
    ["Patient?identifier=urn:oid:1.2.36.146|MRN-SECRET-123", "Secretname, Jane 1961-07-04"],
)
def test_an_unresolved_reference_is_never_repeated_in_the_reason(reference: str) -> None:
    """A conditional reference of a transaction carries the patient's MRN, a free text
    one may be a name: the reason (CLI output, the quarantine's clear-text column) says
    what kind of reference failed, never the reference."""
    unit = parse_bytes(_bundle(_obs(subject={"reference": reference})), "b.json")
    (rejected,) = unit.batch.rejected
    assert rejected.reason_code == "unresolved_reference"
    assert rejected.reason.startswith("subject reference cannot be resolved")
    for secret in ("MRN-SECRET-123", "Secretname", "1961"):
        assert secret not in rejected.reason


def test_a_contained_subject_is_named_as_such() -> None:
    """A contained Patient (``#p9``) is not read; the reason says so, rather than that
    the file names no such resource (it does, inside the Observation)."""
    contained = {"resourceType": "Patient", "id": "p9", "gender": "male"}
    obs = _obs(contained=[contained], subject={"reference": "#p9"})
    (rejected,) = parse_bytes(_bundle(obs), "b.json").batch.rejected
    assert rejected.reason_code == "unresolved_reference"
    assert "a contained resource (#id), which is not read" in rejected.reason
