"""CDS Hooks (discovery, service, feedback, JWT checks) and the FHIR read API, on a trained
model. The EHR's FHIR server in the no-prefetch case is a second vitalcast instance served
over real HTTP."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.conftest import Credentials
from tests.modeling_data import register_champion
from vitalcast.config import Settings
from vitalcast.serving.app import create_app
from vitalcast.serving.cds_hooks import SERVICE_ID
from vitalcast.serving.state import get_state
from vitalcast.serving.tables import CdsFeedback

ISSUER = "https://ehr.example.org"
SERVICE = f"/cds-services/{SERVICE_ID}"
BASE = "http://localhost"


@pytest.fixture(scope="module")
def ehr_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-1"})


@pytest.fixture
def cds_app(settings: Settings, ehr_key: RSAKey, tmp_path: Path) -> Iterator[Flask]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ehr_key.as_dict(private=False)]}))
    app = create_app(settings.model_copy(update={"cds_trusted_issuers": {ISSUER: str(jwks)}}))
    yield app
    get_state(app).close()


def _token(key: RSAKey, *, aud: str = BASE + SERVICE, iss: str = ISSUER, exp_in: int = 300) -> str:
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": aud,
        "exp": now + exp_in,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sub": "ehr-client",
    }
    return jwt.encode({"alg": "RS256", "kid": "ehr-1", "typ": "JWT"}, claims, key)


def _hook(patient: dict[str, Any], observations: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient["id"]},
        "prefetch": {"patient": patient},
    }
    if observations is not None:
        body["prefetch"]["observations"] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": o} for o in observations],
        }
    return body


def _observation(code: str, value: float, unit: str, minutes_ago: int) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()
    return {
        "resourceType": "Observation",
        "id": uuid.uuid4().hex,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-03-01"}


def _register_champion(app: Flask, trained_model: Any) -> None:
    from vitalcast.db import session_scope
    from vitalcast.serving.models import refresh_models

    with session_scope(get_state(app).sessions) as session:
        register_champion(session, trained_model)
    refresh_models(get_state(app))


def test_discovery_is_public(cds_app: Flask) -> None:
    body = cds_app.test_client().get("/cds-services").get_json()
    (service,) = body["services"]
    assert (service["hook"], service["id"]) == ("patient-view", SERVICE_ID)
    assert "{{context.patientId}}" in service["prefetch"]["patient"]


def test_patient_view_card_from_prefetch_and_feedback(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    _register_champion(cds_app, trained_model)
    client = cds_app.test_client()
    observations = [
        _observation("8867-4", 128, "/min", 30),
        _observation("2524-7", 4.1, "mmol/L", 60),
        _observation("8310-5", 101.3, "[degF]", 45),
    ]
    response = client.post(
        SERVICE,
        json=_hook(PATIENT, observations),
        headers={"Authorization": f"Bearer {_token(ehr_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["summary"].startswith("ICU mortality risk ")
    assert len(card["summary"]) <= 140
    assert card["links"][0]["type"] == "absolute"
    # No encounter in the prefetch: the stay starts at its first observation, an hour ago,
    # before the model's first calibrated hour (3 h), so the card calls the risk provisional.
    assert card["summary"].endswith(", early)")
    assert "Early in the stay: scored 1.0 h after admission, before 3 h" in card["detail"]
    later = client.post(
        SERVICE,
        json=_hook(PATIENT, [*observations, _observation("8867-4", 120, "/min", 300)]),
        headers={"Authorization": f"Bearer {_token(ehr_key)}"},
    ).get_json()["cards"][0]
    assert "early" not in later["summary"]
    assert "Early in the stay" not in later["detail"]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "not-relevant", "display": "Not relevant"}},
                "outcomeTimestamp": "2026-11-28T12:00:00Z",
            }
        ]
    }
    token = _token(ehr_key, aud=BASE + SERVICE)
    stored = client.post(
        f"{SERVICE}/feedback", json=feedback, headers={"Authorization": f"Bearer {token}"}
    )
    assert stored.status_code == 200, stored.get_json()
    with get_state(cds_app).sessions() as session:
        row = session.scalars(select(CdsFeedback)).one()
    assert (row.outcome, row.override_reason, row.card_uuid) == (
        "overridden",
        "Not relevant",
        card["uuid"],
    )
    assert row.prediction_id is not None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("none", "need a JWT"),
        ("forged", "rejected"),
        ("expired", "rejected"),
        ("audience", "rejected"),
        ("issuer", "not a trusted"),
    ],
)
def test_bad_tokens_are_refused(cds_app: Flask, ehr_key: RSAKey, case: str, expected: str) -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"})
    tokens = {
        "none": None,
        "forged": _token(other),  # right kid and claims, wrong signing key
        "expired": _token(ehr_key, exp_in=-600),
        "audience": _token(ehr_key, aud="https://elsewhere.example/cds-services/x"),
        "issuer": _token(ehr_key, iss="https://rogue.example"),
    }
    headers = {"Authorization": f"Bearer {tokens[case]}"} if tokens[case] else {}
    response = cds_app.test_client().post(SERVICE, json=_hook(PATIENT, []), headers=headers)
    assert response.status_code == 401
    assert expected in response.get_json()["error"]["message"]


def test_no_prefetch_reads_the_ehr_fhir_server(
    cds_app: Flask,
    ehr_key: RSAKey,
    trained_model: Any,
    ward: list[str],
    app: Flask,
    creds: Credentials,
) -> None:
    """The other instance (``app`` with its ward) plays the EHR's FHIR server over HTTP."""
    from vitalcast.serving.models import refresh_models

    refresh_models(get_state(cds_app))  # the ward fixture registered the champion
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        key = creds.api_key("integration")["Authorization"].removeprefix("Bearer ")
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": f"http://127.0.0.1:{server.server_port}/fhir",
            "fhirAuthorization": {
                "access_token": key,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds",
            },
            "context": {"userId": "Practitioner/1", "patientId": ward[0]},
        }
        response = cds_app.test_client().post(
            SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
        )
    finally:
        server.shutdown()
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    assert card["detail"], "scored from the fetched observations, with its factors"


def test_fhir_read_api(client: FlaskClient, creds: Credentials, ward: list[str]) -> None:
    headers = creds.api_key("clinician")
    patient = client.get(f"/fhir/Patient/{ward[0]}", headers=headers)
    assert patient.status_code == 200
    assert patient.mimetype == "application/fhir+json"
    assert patient.get_json()["identifier"][0]["value"].startswith("SYN")
    hidden = client.get(f"/fhir/Patient/{ward[0]}", headers=creds.api_key("data_scientist"))
    assert "identifier" not in hidden.get_json()
    obs = client.get(
        f"/fhir/Observation?patient={ward[0]}&code=http://loinc.org|8867-4", headers=headers
    ).get_json()
    assert obs["type"] == "searchset"
    assert obs["total"] > 0
    assert {e["resource"]["code"]["coding"][0]["code"] for e in obs["entry"]} == {"8867-4"}
    risk = client.get(f"/fhir/RiskAssessment?patient=Patient/{ward[0]}", headers=headers)
    entry = risk.get_json()["entry"][0]["resource"]
    assert 0 < entry["prediction"][0]["probabilityDecimal"] < 1
    assert entry["occurrenceDateTime"]
    one = client.get(f"/fhir/RiskAssessment/{entry['id']}", headers=headers)
    assert one.get_json()["id"] == entry["id"]
    bad = client.get(f"/fhir/Observation?patient={ward[0]}&date=yesterday", headers=headers)
    assert bad.status_code == 422
    newest = client.get(
        f"/fhir/Observation?patient={ward[0]}&_sort=-date&_count=5", headers=headers
    ).get_json()["entry"]
    times = [e["resource"]["effectiveDateTime"] for e in newest]
    assert len(times) == 5
    assert times == sorted(times, reverse=True)
    assert times[0] == obs_all_last(client, ward[0], headers)
    sort = client.get(f"/fhir/Observation?patient={ward[0]}&_sort=code", headers=headers)
    assert sort.status_code == 422
    stays = client.get(
        f"/fhir/Encounter?patient={ward[0]}&status=in-progress", headers=headers
    ).get_json()
    (stay,) = [e["resource"] for e in stays["entry"]]
    assert (stay["status"], stay["subject"]["reference"]) == ("in-progress", f"Patient/{ward[0]}")
    assert stay["location"][0]["location"]["display"] in ("CCU", "CSRU", "MICU", "SICU")
    assert "end" not in stay["period"]
    finished = client.get(f"/fhir/Encounter?patient={ward[0]}&status=finished", headers=headers)
    assert finished.get_json()["total"] == 0
    assert client.get(f"/fhir/Encounter/{stay['id']}", headers=headers).get_json() == stay
    assert client.get("/fhir/Encounter/nope", headers=headers).status_code == 404
    assert client.get("/fhir/metadata").get_json()["fhirVersion"] == "4.0.1"


def obs_all_last(client: FlaskClient, patient: str, headers: dict[str, str]) -> str:
    """The latest effective time of the patient's observations, in ascending order."""
    entries = client.get(f"/fhir/Observation?patient={patient}", headers=headers).get_json()
    return str(entries["entry"][-1]["resource"]["effectiveDateTime"])
