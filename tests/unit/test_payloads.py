"""HTTP observation payloads: every problem reported at once, with its location."""

from __future__ import annotations

import json

import pytest

from vitalcast.clinical.records import PUBLIC_PATIENT_REF
from vitalcast.errors import BadRequest, InvalidInput
from vitalcast.ingest.payloads import parse_observations_payload
from vitalcast.ingest.sources.device_payload import DEVICE_REF

GOOD = {"code": "8867-4", "value": 88, "unit": "/min", "time": "2025-01-01T10:00:00Z"}


def _details(body: bytes) -> list[dict[str, object]]:
    with pytest.raises(InvalidInput) as info:
        parse_observations_payload(body)
    assert "nothing was stored" in info.value.message or info.value.details
    return info.value.details


def test_compact_list_with_patient_and_device() -> None:
    body = json.dumps([{**GOOD, "patient": "p123"}, {**GOOD, "device": "mon-1"}]).encode()
    batch = parse_observations_payload(body)
    assert [o.patient_ref for o in batch.observations] == [
        PUBLIC_PATIENT_REF + "p123",
        DEVICE_REF + "mon-1",
    ]
    assert batch.observations[1].device_id == "mon-1"


def test_fhir_bundle_of_blood_pressure_panel() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p123"},
        "effectiveDateTime": "2025-01-01T10:00:00+01:00",
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {
                    "value": v,
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
            for code, v in (("8480-6", 120), ("8462-4", 80))
        ],
    }
    body = json.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": obs}]}
    ).encode()
    batch = parse_observations_payload(body)
    assert [(o.code, o.value) for o in batch.observations] == [("8480-6", 120), ("8462-4", 80)]
    assert batch.observations[0].source_ref.endswith(".component[0]")


def test_all_problems_at_once() -> None:
    body = json.dumps(
        [
            GOOD,  # no patient or device
            {**GOOD, "patient": "p1", "code": "1234-5"},  # unknown code
            {**GOOD, "patient": "p1", "time": "2025-01-01T10:00:00"},  # naive time
            {"resourceType": "Patient", "id": "x"},  # wrong resourceType
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"code": "8867-4"}]},
            },  # missing subject
            "text",
        ]
    ).encode()
    details = _details(body)
    locs = [d["loc"] for d in details]
    assert ["body", 0, "patient"] in locs
    assert ["body", 1, "code"] in locs
    assert ["body", 2, "time"] in locs
    assert ["body", 3, "resourceType"] in locs
    assert ["body", 4, "subject"] in locs
    assert ["body", 5] in locs


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"{not json", BadRequest, "not valid JSON"),
        (b"\xff\xfe[]", BadRequest, "not UTF-8"),
        # Python refuses integers of more than 4300 digits with a plain ValueError.
        (b'[{"value": 1' + b"0" * 5000 + b"}]", BadRequest, "not valid JSON"),
        (b"[]", InvalidInput, "1 problem"),
        (b'"hello"', InvalidInput, "1 problem"),
    ],
)
def test_unreadable_bodies(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_observations_payload(body)


def test_values_are_strict_finite_numbers_and_times_in_range() -> None:
    item = {**GOOD, "patient": "p1"}
    body = json.dumps(
        [
            {**item, "value": True},  # not a heart rate of 1
            {**item, "value": "131"},  # not 131
            {**item, "value": 10**400},  # beyond any float
            {**item, "time": "0001-01-01T00:00:00+14:00"},  # year 0 in UTC
            {**item, "value": 131},
        ]
    ).encode()
    details = _details(body)
    assert [d["loc"] for d in details] == [
        ["body", 0, "value"],
        ["body", 1, "value"],
        ["body", 2, "value"],
        ["body", 3, "time"],
    ]
    assert "1800-2200" in str(details[3]["msg"])


@pytest.mark.parametrize("subject", ["Patient/p1", ["Patient/p1"], 7])
def test_fhir_subject_must_be_a_reference_object(subject: object) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": subject,
        "effectiveDateTime": "2025-01-01T10:00:00Z",
        "valueQuantity": {"value": 80},
    }
    details = _details(json.dumps(obs).encode())
    assert details == [{"loc": ["body", "subject"], "msg": "subject must be a Reference object"}]
