"""Every error under ``/fhir`` is an R4 OperationOutcome a FHIR client can read, with the
status it always had, whoever answers it (the view, the guard, routing, the rate limiter);
``/api/v1`` and the web UI keep their own error shapes. Real app, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import Credentials
from vitalcast.config import Settings
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state

# A public id no patient has, sent as a search's value: it must not come back.
UNKNOWN_PATIENT = "patient-7f3a9c"


def _outcome(response: TestResponse, status: int, code: str) -> OperationOutcome:
    """The response's OperationOutcome, after checking what every FHIR error shares."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/fhir+json", text
    outcome = OperationOutcome.model_validate_json(text)  # R4B's model is R4's here
    assert outcome.issue, text
    for issue in outcome.issue:
        assert (issue.severity, issue.code) == ("error", code), text
        assert issue.diagnostics, text
    assert "error" not in response.get_json()  # not the service's own shape
    return outcome


def _expressions(outcome: OperationOutcome) -> list[str]:
    return [e for issue in outcome.issue for e in (issue.expression or [])]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/fhir/Patient/0123456789abcdef0123456789abcdef", "patient"),
        ("/fhir/Encounter/nope", "no Encounter with that id"),
        ("/fhir/RiskAssessment/nope", "no RiskAssessment with that id"),
    ],
)
def test_an_unknown_id_is_a_404_not_found_outcome(
    client: FlaskClient, creds: Credentials, path: str, message: str
) -> None:
    response = client.get(path, headers=creds.api_key("clinician"))
    outcome = _outcome(response, 404, "not-found")
    diagnostics = outcome.issue[0].diagnostics or ""
    assert message in diagnostics
    assert path.rsplit("/", 1)[1] not in diagnostics


def test_an_unknown_path_under_the_base_is_a_404_outcome(
    client: FlaskClient, creds: Credentials
) -> None:
    for path in ("/fhir/Medication/1", "/fhir", "/fhir/"):
        _outcome(client.get(path, headers=creds.api_key("clinician")), 404, "not-found")


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("Observation?patient={p}&category=vital-signs", "category"),
        ("Encounter?patient={p}&_sort=-date", "_sort"),
        ("RiskAssessment?patient={p}&patient={p}", "patient"),
    ],
)
def test_an_unknown_or_repeated_search_parameter_is_a_422_invalid_outcome_naming_it(
    client: FlaskClient, creds: Credentials, query: str, where: str
) -> None:
    url = f"/fhir/{query.format(p=UNKNOWN_PATIENT)}"
    response = client.get(url, headers=creds.api_key("clinician"))
    outcome = _outcome(response, 422, "invalid")
    assert where in _expressions(outcome)
    diagnostics = [i.diagnostics or "" for i in outcome.issue]
    assert all(d.startswith("invalid FHIR search parameters: ") for d in diagnostics)
    assert any(f": {where}: " in d for d in diagnostics)
    assert UNKNOWN_PATIENT not in response.get_data(as_text=True)


@pytest.mark.parametrize("value", ["Device/mon-3", "Group/1", "https://ehr.example/Patient/9"])
def test_a_subject_that_is_no_patient_reference_is_a_422_naming_the_parameter(
    client: FlaskClient, creds: Credentials, value: str
) -> None:
    """It was looked up as a patient id and answered 404, as if the patient were unknown."""
    response = client.get(
        "/fhir/Observation", query_string={"subject": value}, headers=creds.api_key("clinician")
    )
    outcome = _outcome(response, 422, "invalid")
    assert _expressions(outcome) == ["subject"]
    assert value not in response.get_data(as_text=True)


def test_every_bad_value_is_an_issue_of_its_own_without_the_value(
    client: FlaskClient, creds: Credentials
) -> None:
    url = f"/fhir/Observation?patient={UNKNOWN_PATIENT}&_count=lots&_offset=-77"
    response = client.get(url, headers=creds.api_key("clinician"))
    outcome = _outcome(response, 422, "invalid")
    assert sorted(_expressions(outcome)) == ["_count", "_offset"]
    text = response.get_data(as_text=True)
    for value in ("lots", "-77", UNKNOWN_PATIENT):
        assert value not in text


def test_unstorable_text_refused_by_the_guard_is_an_outcome(
    client: FlaskClient, creds: Credentials
) -> None:
    url = f"/fhir/Observation?patient={UNKNOWN_PATIENT}&code=a%00b"
    outcome = _outcome(client.get(url, headers=creds.api_key("clinician")), 422, "invalid")
    assert _expressions(outcome) == ["code"]


def test_missing_or_bad_credentials_are_a_401_login_outcome(client: FlaskClient) -> None:
    path = f"/fhir/Observation?patient={UNKNOWN_PATIENT}"
    for headers in ({}, {"Accept": "text/html"}, {"Authorization": "Bearer vc_nope_nope"}):
        response = client.get(path, headers=headers)
        outcome = _outcome(response, 401, "login")
        assert UNKNOWN_PATIENT not in response.get_data(as_text=True)
        assert outcome.issue[0].diagnostics


def test_a_method_the_path_does_not_take_is_a_405_outcome_with_allow(
    client: FlaskClient, creds: Credentials
) -> None:
    headers = creds.api_key("integration")
    for method, path in (("POST", "/fhir/Patient/x"), ("DELETE", "/fhir/metadata")):
        response = client.open(path, method=method, headers=headers, json={})
        _outcome(response, 405, "not-supported")
        assert "GET" in response.headers["Allow"]


def test_guard_refusals_of_a_body_are_outcomes(client: FlaskClient, creds: Credentials) -> None:
    headers = creds.api_key("integration")
    deep = client.post("/fhir/Observation", data="[" * 200, headers=headers)
    _outcome(deep, 400, "invalid")
    limit = get_state(client.application).settings.max_request_bytes
    big = client.post("/fhir/Observation", data=b"x" * (limit + 1), headers=headers)
    _outcome(big, 413, "too-long")


@pytest.fixture
def limited(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update={"rate_limit_per_caller": "2/minute"}))
    yield app
    get_state(app).close()


def test_the_rate_limit_is_a_429_throttled_outcome(limited: Flask) -> None:
    client = limited.test_client()
    env = {"REMOTE_ADDR": "127.0.0.77"}
    codes = [client.get("/fhir/metadata", environ_base=env).status_code for _ in range(2)]
    assert codes == [200, 200]
    over = client.get("/fhir/metadata", environ_base=env)
    _outcome(over, 429, "throttled")
    assert int(over.headers["Retry-After"]) > 0


def test_api_v1_and_web_errors_keep_their_own_shapes(
    client: FlaskClient, creds: Credentials
) -> None:
    unknown = client.get(f"/api/v1/patients/{UNKNOWN_PATIENT}", headers=creds.api_key("clinician"))
    assert (unknown.status_code, unknown.mimetype) == (404, "application/json")
    error = unknown.get_json()["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == "not_found"
    assert error["request_id"] == unknown.headers["X-Request-ID"]
    anonymous = client.get("/api/v1/patients")
    assert anonymous.status_code == 401
    assert anonymous.get_json()["error"]["code"] == "unauthorized"
    # Only the base and what is below it: a path that merely starts with its letters is not.
    beside = client.get("/fhirx/Patient/1")
    assert beside.status_code == 404
    assert beside.get_json()["error"]["code"] == "not_found"
    page = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert (page.status_code, page.mimetype) == (404, "text/html")
