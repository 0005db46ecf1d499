"""Hostile HTTP input on real PostgreSQL with a trained champion: a 4xx naming the place,
never a 500. Each case here was a 500 (an OverflowError or a ValueError escaping) or a
silently accepted wrong value before."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Credentials
from vitalcast.serving.state import get_state

OUT_OF_RANGE = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
HUGE = "1" + "0" * 400  # a JSON integer beyond any float
TOO_MANY_DIGITS = "1" * 5000  # beyond Python's int parsing limit (4300 digits)


def _fhir_observation(patient: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "valueQuantity": {"value": 80, "unit": "/min"},
        **fields,
    }


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    return error


def _outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    outcome: dict[str, Any] = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


def test_out_of_range_times_are_422_on_every_route(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    reader, writer = creds.api_key("clinician"), creds.api_key("integration")
    pid = ward[0]
    for when in OUT_OF_RANGE:
        for path, params in [
            (f"/api/v1/patients/{pid}/predictions", {"since": when}),
            (f"/api/v1/patients/{pid}/observations", {"since": when}),
            ("/fhir/Observation", {"patient": pid, "date": f"ge{when}"}),
            ("/fhir/RiskAssessment", {"patient": pid, "date": f"le{when}"}),
        ]:
            response = client.get(path, query_string=params, headers=reader)
            if path.startswith("/fhir/"):  # an OperationOutcome, one issue per problem
                problems = [i["diagnostics"] for i in _outcome(response, 422)["issue"]]
            else:
                problems = _error(response, 422)["details"]
            assert "1800-2200" in str(problems), path
        compact = {"code": "8867-4", "value": 80, "unit": "/min", "time": when, "patient": pid}
        error = _error(client.post("/api/v1/observations", json=[compact], headers=writer), 422)
        assert [d["loc"] for d in error["details"]] == [["body", 0, "time"]]
        fhir = _fhir_observation(pid, effectiveDateTime=when)
        error = _error(client.post("/api/v1/observations", json=fhir, headers=writer), 422)
        assert "time_out_of_range" in error["details"][0]["msg"]


def test_huge_numbers_are_4xx(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("integration")
    predictor = get_state(app).predictor
    assert predictor is not None
    numeric = next(n for n in predictor.feature_names if n not in predictor.scorer.category_codes)
    raw = {"Content-Type": "application/json", **headers}

    error = _error(
        client.post("/api/v1/predict", data=f'{{"{numeric}": {HUGE}}}', headers=raw), 422
    )
    assert error["details"] == [
        {"loc": ["body", numeric], "msg": "expected a number between ±1e+09"}
    ]
    error = _error(
        client.post(
            "/api/v1/predict/batch", data=f'{{"rows": [{{"{numeric}": {HUGE}}}]}}', headers=raw
        ),
        422,
    )
    assert error["details"][0]["loc"] == ["body", "rows", 0, numeric]
    for path in ("/api/v1/predict", "/api/v1/observations"):
        error = _error(client.post(path, data=f'{{"x": {TOO_MANY_DIGITS}}}', headers=raw), 400)
        assert "too many digits" in str(error), path

    fhir = _fhir_observation(ward[0])
    body = str(fhir).replace("'", '"').replace('"value": 80', f'"value": {HUGE}')
    error = _error(client.post("/api/v1/observations", data=body, headers=raw), 422)
    assert "non_numeric_value" in error["details"][0]["msg"]


@pytest.mark.parametrize("subject", ["Patient/x", ["Patient/x"]])
def test_fhir_subject_of_the_wrong_shape_is_422(
    client: FlaskClient, creds: Credentials, subject: Any
) -> None:
    body = {**_fhir_observation("x"), "subject": subject}
    response = client.post("/api/v1/observations", json=body, headers=creds.api_key("integration"))
    error = _error(response, 422)
    assert error["details"] == [
        {"loc": ["body", "subject"], "msg": "subject must be a Reference object"}
    ]


def test_compact_values_must_be_json_numbers(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    now = datetime.now(UTC).isoformat()
    base = {"code": "8867-4", "unit": "/min", "time": now, "patient": ward[0]}
    body = [{**base, "value": True}, {**base, "value": "131"}, {**base, "value": 131}]
    response = client.post("/api/v1/observations", json=body, headers=creds.api_key("integration"))
    error = _error(response, 422)
    assert [d["loc"] for d in error["details"]] == [["body", 0, "value"], ["body", 1, "value"]]


def test_text_values_are_quarantined_like_hl7_and_never_cut(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    now = datetime.now(UTC).isoformat()
    compact = {"code": "8867-4", "value_text": "fast", "time": now, "patient": ward[0]}
    short = _fhir_observation(ward[0], valueString="fast")
    long = _fhir_observation(ward[0], valueString="very fast " * 50)
    for fhir in (short, long):
        fhir.pop("valueQuantity")
    headers = creds.api_key("integration")
    for body, reason in ((compact, "non_numeric_value"), (short, "non_numeric_value")):
        response = client.post("/api/v1/observations", json=body, headers=headers)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["report"]["reasons"] == {reason: 1}
    response = client.post("/api/v1/observations", json=long, headers=headers)
    assert response.status_code == 201
    report = response.get_json()["report"]
    assert report["reasons"] == {"too_long": 1}
    assert "value_text is 500 characters; at most 200" in report["rejects"][0]["reason"]


MECH_VENT = {"coding": [{"system": "urn:vitalcast:codes", "code": "mech-vent"}]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # bool("false") is True: this was stored as "ventilated".
        ({"code": MECH_VENT, "valueBoolean": "false"}, "valueBoolean must be JSON true or false"),
        ({"code": MECH_VENT, "valueBoolean": None}, "valueBoolean must be JSON true or false"),
        ({"valueQuantity": {"value": "77", "unit": "/min"}}, "must be a JSON number"),
        ({"valueInteger": "77"}, "valueInteger must be a JSON integer"),
        # Each of these was a 500 (AttributeError on None).
        ({"valueQuantity": None}, "valueQuantity must be a JSON object"),
        ({"valueCodeableConcept": None}, "valueCodeableConcept must be a JSON object"),
    ],
)
def test_fhir_values_of_the_wrong_json_type_are_422_and_nothing_stored(
    client: FlaskClient, creds: Credentials, ward: list[str], value: Any, message: str
) -> None:
    reader, writer = creds.api_key("clinician"), creds.api_key("integration")
    before = client.get(f"/api/v1/patients/{ward[0]}/observations", headers=reader).get_json()
    body = _fhir_observation(ward[0])
    body.pop("valueQuantity")
    error = _error(client.post("/api/v1/observations", json={**body, **value}, headers=writer), 422)
    assert message in error["details"][0]["msg"]
    assert "invalid_value" in error["details"][0]["msg"]
    after = client.get(f"/api/v1/patients/{ward[0]}/observations", headers=reader).get_json()
    assert after == before


def test_a_component_value_of_null_is_422(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    body = _fhir_observation(ward[0])
    body.pop("valueQuantity")
    body["component"] = [{"code": _fhir_observation("x")["code"], "valueQuantity": None}]
    response = client.post("/api/v1/observations", json=body, headers=creds.api_key("integration"))
    assert "valueQuantity must be a JSON object" in _error(response, 422)["details"][0]["msg"]


def test_quarantine_reason_states_an_excluded_low_limit(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """A heart rate of 0 is refused (the low limit is exclusive: an asystole reading is a
    lead off, not a measurement); the reason must not read "range 0-300", which says 0
    is allowed. The top of the range is allowed, and the message says so too."""
    now = datetime.now(UTC).isoformat()
    base = {"code": "8867-4", "unit": "/min", "time": now, "patient": ward[0]}
    headers = creds.api_key("integration")
    response = client.post(
        "/api/v1/observations", json=[{**base, "value": 0}, {**base, "value": 300}], headers=headers
    )
    assert response.status_code == 201, response.get_json()
    report = response.get_json()["report"]
    assert (report["stored"], report["quarantined"]) == (1, 1)
    assert [r["reason"] for r in report["rejects"]] == [
        "Heart rate 0 bpm outside plausible range above 0, up to 300"
    ]


def test_observation_and_device_errors_are_located_in_the_request(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """Every problem's ``loc`` starts with the part of the request that carried it
    (docs/api.md: ``query``, ``body``, ``path``), on these routes as on the others."""
    from sqlalchemy import select

    from vitalcast.clinical.tables import Encounter, Patient

    headers = creds.api_key("integration")

    def locs(response: Any) -> list[list[Any]]:
        return [d["loc"] for d in _error(response, 422)["details"]]

    compact = {"code": "8867-4", "value": 80, "unit": "/min", "time": "yesterday"}
    post = client.post
    assert locs(
        post("/api/v1/observations", json=[{**compact, "patient": ward[0]}], headers=headers)
    ) == [["body", 0, "time"]]
    assert locs(post("/api/v1/observations", json={"resourceType": "Bundle"}, headers=headers)) == [
        ["body", "entry"]
    ]
    bad_value = _fhir_observation(ward[0], valueQuantity={"value": "abc", "unit": "/min"})
    bundle = {"resourceType": "Bundle", "entry": [{"resource": bad_value}]}
    assert locs(post("/api/v1/observations", json=bad_value, headers=headers)) == [
        ["body", "valueQuantity", "value"]
    ]
    assert locs(post("/api/v1/observations", json=bundle, headers=headers)) == [
        ["body", "entry", 0, "resource", "valueQuantity", "value"]
    ]
    assert locs(post("/api/v1/observations", json=[], headers=headers)) == [["body"]]

    bad_device = "bad device!"
    binding = {"patient_id": ward[0]}
    assert locs(
        client.put(f"/api/v1/devices/{bad_device}/binding", json=binding, headers=headers)
    ) == [["path", "device_id"]]
    assert locs(client.delete(f"/api/v1/devices/{bad_device}/binding", headers=headers)) == [
        ["path", "device_id"]
    ]
    with get_state(app).sessions() as session:
        other_stay = session.scalar(
            select(Encounter.public_id)
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Patient.public_id == ward[1])
        )
    wrong_stay = {"patient_id": ward[0], "encounter_id": other_stay}
    assert locs(client.put("/api/v1/devices/mon-1/binding", json=wrong_stay, headers=headers)) == [
        ["body", "encounter_id"]
    ]


def test_a_number_is_not_a_reading_time(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """``"time": 20261130`` was read as seconds since 1970 and stored as a reading on
    1970-08-24 (201); the schema says ISO 8601 text, as the query parameters enforce."""
    headers = creds.api_key("integration")
    for when in (20261130, 1764583200, 1.5, True):
        reading = {"code": "8867-4", "value": 80, "unit": "/min", "time": when, "patient": ward[0]}
        error = _error(client.post("/api/v1/observations", json=[reading], headers=headers), 422)
        assert [d["loc"] for d in error["details"]] == [["body", 0, "time"]], when
        assert "not a number" in error["details"][0]["msg"]


def test_a_member_given_twice_is_refused_not_the_last_kept(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """JSON with a member named twice kept the last value silently: a predict request
    naming two patients scored the second, and a reading with two values stored one."""
    headers = {"Content-Type": "application/json", **creds.api_key("integration")}
    first, second = json.dumps(ward[0]), json.dumps(ward[1])
    body = f'{{"patient_id": {first}, "patient_id": {second}}}'
    response = client.post("/api/v1/predict", data=body, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    message = response.get_json()["error"]["message"]
    assert "'patient_id' more than once" in message
    assert ward[0] not in message
    assert ward[1] not in message
    fields = f'"time": "{datetime.now(UTC).isoformat()}", "patient": {first}'
    reading = f'[{{"code": "8867-4", "value": 80, "value": 180, "unit": "/min", {fields}}}]'
    response = client.post("/api/v1/observations", data=reading, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "'value' more than once" in str(response.get_json()["error"])
