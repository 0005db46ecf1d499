"""CDS Hooks (discovery, service, feedback, JWT checks) and the FHIR read API, on a trained
model. The EHR's FHIR server in the no-prefetch case is a second vitalcast instance served
over real HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
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
from vitalcast.clinical.records import ObservationRecord
from vitalcast.config import Settings
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.app import create_app
from vitalcast.serving.cds_hooks import SERVICE_ID
from vitalcast.serving.state import get_state
from vitalcast.serving.tables import CdsFeedback, CdsJwtUse

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


def _token(
    key: RSAKey,
    *,
    aud: str = BASE + SERVICE,
    iss: str = ISSUER,
    exp_in: int = 300,
    **claims: Any,
) -> str:
    """A signed client JWT; ``claims`` override the defaults, ``None`` leaves one out."""
    now = int(time.time())
    defaults = {
        "iss": iss,
        "aud": aud,
        "exp": now + exp_in,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sub": "ehr-client",
    }
    signed = {k: v for k, v in {**defaults, **claims}.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "ehr-1", "typ": "JWT"}, signed, key)


def _auth(key: RSAKey) -> dict[str, str]:
    """Headers with a fresh token: each token is good for one request (its jti)."""
    return {"Authorization": f"Bearer {_token(key)}"}


def _segment(value: Any) -> str:
    """``value`` as a JWT segment (base64url JSON without padding)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def _hook(
    patient: dict[str, Any],
    observations: list[dict[str, Any]] | None,
    encounters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A patient-view request with the prefetch keys the discovery document asks for."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient["id"]},
        "prefetch": {"patient": patient},
    }
    if encounters is not None:
        body["prefetch"]["encounters"] = _searchset(encounters)
    if observations is not None:
        body["prefetch"]["observations"] = _searchset(observations)
    return body


def _encounter(
    minutes_ago: int, *, status: str = "in-progress", eid: str = "e1", unit: str = "MICU"
) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    period = {"start": start.isoformat()}
    if status == "finished":
        period["end"] = (start + timedelta(days=3)).isoformat()
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
        "subject": {"reference": "Patient/p1"},
        "period": period,
        "location": [{"location": {"display": unit}}],
    }


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
    # Every status FHIR ingestion stores as a stay going on, not in-progress alone.
    assert service["prefetch"]["encounters"] == (
        "Encounter?patient={{context.patientId}}&status=arrived,in-progress,onleave,triaged"
    )
    assert service["usageRequirements"] == (
        "ICU and hospital stays of patients aged 15 or over; decision support only."
    )
    # A deployment that names its ICU units says so in the EHR's service catalogue.
    state = get_state(cds_app)
    state.settings = state.settings.model_copy(update={"stay_units": ["MICU"]})
    (named,) = cds_app.test_client().get("/cds-services").get_json()["services"]
    assert named["usageRequirements"].startswith("ICU and hospital stays of patients aged 15")
    assert "on units MICU; decision support only." in named["usageRequirements"]


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
        json=_hook(PATIENT, observations, [_encounter(60)]),
        headers={"Authorization": f"Bearer {_token(ehr_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["summary"].startswith("ICU mortality risk ")
    assert len(card["summary"]) <= 140
    assert card["links"][0]["type"] == "absolute"
    # The store holds no such patient: the link opens the ward list.
    assert card["links"][0]["url"] == "http://localhost/ward"
    # The encounter began an hour ago, before the model's first calibrated hour (3 h), so
    # the card calls the risk provisional.
    assert card["summary"].endswith(", early)")
    assert "Early in the stay: scored 1.0 h after admission, before 3 h" in card["detail"]
    later = client.post(
        SERVICE,
        json=_hook(PATIENT, observations, [_encounter(300)]),
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
                "outcomeTimestamp": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
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
        ("list_payload", "not a JWT"),
        ("number_payload", "not a JWT"),
        ("null_payload", "not a JWT"),
        # CDS Hooks requires exp, iat and jti; the token must be short-lived.
        ("never_expires", "(exp): it lives longer than 300 s"),
        ("an_hour", "lives longer than 300 s"),
        ("exp_ahead", "(exp): it is more than 300 s ahead"),
        ("no_iat", "(iat): Missing claim"),
        ("iat_not_a_number", "(iat): Claim 'iat' must be a NumericDate"),
        ("future_iat", "(iat): The token was issued in the future"),
        ("no_exp", "(exp): Missing claim"),
        ("no_jti", "(jti): Missing claim"),
        ("long_jti", "(jti): it must be 1 to 255 characters"),
    ],
)
def test_bad_tokens_are_refused(cds_app: Flask, ehr_key: RSAKey, case: str, expected: str) -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"})
    now = int(time.time())
    tokens = {
        "none": None,
        "forged": _token(other),  # right kid and claims, wrong signing key
        "expired": _token(ehr_key, exp_in=-600),
        "audience": _token(ehr_key, aud="https://elsewhere.example/cds-services/x"),
        "issuer": _token(ehr_key, iss="https://rogue.example"),
        # Three segments whose payload is JSON but not an object: a 500 before.
        "list_payload": f"e30.{_segment([1])}.c2ln",
        "number_payload": f"e30.{_segment(5)}.c2ln",
        "null_payload": f"e30.{_segment(None)}.c2ln",
        "never_expires": _token(ehr_key, exp=10**30),
        "an_hour": _token(ehr_key, exp_in=3600),
        # Issued (by its own word) 50 s from now, within the leeway: exp - iat is 350 s,
        # but exp is 400 s from now.
        "exp_ahead": _token(ehr_key, iat=now + 50, exp=now + 400),
        "no_iat": _token(ehr_key, iat=None),
        "iat_not_a_number": _token(ehr_key, iat=str(now)),
        "future_iat": _token(ehr_key, iat=now + 600, exp=now + 700),
        "no_exp": _token(ehr_key, exp=None),
        "no_jti": _token(ehr_key, jti=None),
        "long_jti": _token(ehr_key, jti="j" * 256),
    }
    headers = {"Authorization": f"Bearer {tokens[case]}"} if tokens[case] else {}
    response = cds_app.test_client().post(SERVICE, json=_hook(PATIENT, []), headers=headers)
    assert response.status_code == 401
    assert expected in response.get_json()["error"]["message"]


def test_a_jwt_is_good_for_one_request(cds_app: Flask, ehr_key: RSAKey) -> None:
    """CDS Hooks: jti protects against replay. A captured token used to work until it
    expired; now its second use is refused, on either endpoint, and a new token passes."""
    client = cds_app.test_client()
    token = {"Authorization": f"Bearer {_token(ehr_key)}"}
    body = {"feedback": [_feedback_item()]}
    first = client.post(f"{SERVICE}/feedback", json=body, headers=token)
    assert first.status_code == 200, first.get_json()
    for path in (f"{SERVICE}/feedback", SERVICE):
        again = client.post(path, json=body, headers=token)
        assert again.status_code == 401
        assert again.get_json()["error"]["message"] == "the JWT was already used (jti)"
    fresh = client.post(f"{SERVICE}/feedback", json=body, headers=_auth(ehr_key))
    assert fresh.status_code == 200, fresh.get_json()
    with get_state(cds_app).sessions() as session:
        assert len(session.scalars(select(CdsFeedback)).all()) == 2
        uses = session.scalars(select(CdsJwtUse)).all()
    assert len(uses) == 2
    assert {u.issuer for u in uses} == {ISSUER}
    # Kept until the token's exp (5 minutes) plus the leeway, not longer.
    assert all(u.expires_at <= datetime.now(UTC) + timedelta(seconds=361) for u in uses)


def test_a_token_refused_later_in_the_request_is_still_used_up(
    cds_app: Flask, ehr_key: RSAKey
) -> None:
    """The jti is recorded in its own transaction: a request answered 4xx after
    authentication (here, malformed feedback) does not give the token back."""
    client = cds_app.test_client()
    token = {"Authorization": f"Bearer {_token(ehr_key)}"}
    bad = client.post(f"{SERVICE}/feedback", json={"feedback": []}, headers=token)
    assert bad.status_code == 400, bad.get_json()
    body = {"feedback": [_feedback_item()]}
    again = client.post(f"{SERVICE}/feedback", json=body, headers=token)
    assert again.status_code == 401
    assert "already used (jti)" in again.get_json()["error"]["message"]


def test_expired_jti_rows_are_deleted_and_do_not_block_a_new_token(
    cds_app: Flask, ehr_key: RSAKey
) -> None:
    """Rows past their token's lifetime are deleted as new tokens arrive; a new token
    reusing an expired token's jti is not a replay (the old one can no longer be used)."""
    from vitalcast.db import session_scope

    past = datetime.now(UTC) - timedelta(minutes=10)
    with session_scope(get_state(cds_app).sessions) as session:
        session.add_all(
            [CdsJwtUse(issuer=ISSUER, jti=f"old-{i}", expires_at=past) for i in range(5)]
        )
    body = {"feedback": [_feedback_item()]}
    reused = _token(ehr_key, jti="old-0")
    response = cds_app.test_client().post(
        f"{SERVICE}/feedback", json=body, headers={"Authorization": f"Bearer {reused}"}
    )
    assert response.status_code == 200, response.get_json()
    with get_state(cds_app).sessions() as session:
        (left,) = session.scalars(select(CdsJwtUse)).all()
    assert left.jti == "old-0"
    assert left.expires_at > datetime.now(UTC)


def test_one_token_sent_to_two_workers_at_once_is_accepted_once(cds_app: Flask) -> None:
    """The unique constraint is the check: two transactions recording the same (iss, jti)
    at the same time (two gunicorn workers) cannot both succeed."""
    from vitalcast.db import session_scope
    from vitalcast.errors import Unauthorized
    from vitalcast.serving.cds_auth import remember_jti

    claims = {"iss": ISSUER, "jti": uuid.uuid4().hex, "exp": int(time.time()) + 300}
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def worker() -> None:
        try:
            with session_scope(get_state(cds_app).sessions) as session:
                barrier.wait()
                remember_jti(session, claims)
            outcomes.append("accepted")
        except Unauthorized as exc:
            outcomes.append(exc.message)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["accepted", "the JWT was already used (jti)"]


@pytest.mark.parametrize("payload", ["WzFd", "MQ", "bnVsbA", "InN0cmluZyI"])
def test_a_jwt_whose_claims_are_not_an_object_is_refused_not_a_500(
    cds_app: Flask, payload: str
) -> None:
    """Three dot-separated parts whose middle one is JSON but not an object (a list, a
    number, null, a string) used to fail before authentication with a 500."""
    headers = {"Authorization": f"Bearer e30.{payload}.c2ln"}
    response = cds_app.test_client().post(SERVICE, json=_hook(PATIENT, []), headers=headers)
    assert response.status_code == 401
    assert "not a JWT" in response.get_json()["error"]["message"]


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


@contextmanager
def _served(application: Flask) -> Iterator[str]:
    """``application`` over real HTTP on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


class FakeFhir:
    """A FHIR server that answers from canned resources and records every request."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.app = Flask("fake-fhir")

        @self.app.get("/<path:path>")
        def answer(path: str) -> Any:
            from flask import request

            self.requests.append((path, dict(request.args), request.headers.get("Authorization")))
            status, body = routes.get(path, (404, {"resourceType": "OperationOutcome"}))
            return self.app.response_class(json.dumps(body), status=status)


def _audit_rows(app: Flask, event: str = "cds.patient-view") -> list[AuditEvent]:
    with get_state(app).sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)
            )
        )


def test_prefetched_stay_scores_exactly_as_the_stored_stay(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """Train/serve parity: one stay, stored in the database and sent as FHIR prefetch,
    gives the same feature vector and risk; an earlier stay's values do not count."""
    from vitalcast.clinical.tables import Encounter
    from vitalcast.features import stay_features
    from vitalcast.modeling.tables import Prediction
    from vitalcast.serving.scoring import features_digest, stay_input
    from vitalcast.synth import generate_cohort, store_cohort
    from vitalcast.synth.fhir import (
        _descriptor_observations,
        encounter_resource,
        observation_resource,
        patient_resource,
    )

    _register_champion(cds_app, trained_model)
    state = get_state(cds_app)
    now = datetime.now(UTC)
    batch = generate_cohort(n_current=1, n_historic=0, seed=23, now=now)
    # Both descriptors present (the generator leaves some out), so that both are compared.
    batch.encounters[0] = replace(batch.encounters[0], height_cm=171.5, weight_kg=83.2)
    with state.sessions() as session:
        store_cohort(session=session, batch=batch, cipher=state.cipher, now=now)
    (person,), (stay,) = batch.patients, batch.encounters
    patient = patient_resource(person)
    records = [*_descriptor_observations(stay), *batch.observations]
    observations = [observation_resource(o, n) for n, o in enumerate(records, start=1)]
    # The patient's previous stay, 400 days ago (finished), with a value of its own, and a
    # value without an encounter reference two hours before this admission: neither counts.
    previous = encounter_resource(
        replace(
            stay,
            ref="synth:previous",
            admitted_at=now - timedelta(days=400),
            discharged_at=now - timedelta(days=396),
        ),
        died=False,
    )
    old = [
        observation_resource(
            ObservationRecord(
                patient_ref=person.ref,
                encounter_ref=ref,
                code="8867-4",
                effective_at=at,
                value=160.0,
                unit="/min",
            ),
            n,
        )
        for n, (ref, at) in enumerate(
            [
                ("synth:previous", now - timedelta(days=399)),
                (None, stay.admitted_at - timedelta(hours=2)),
            ],
            start=90_000,
        )
    ]
    body = _hook(patient, [*old, *observations], [previous, encounter_resource(stay, None)])
    response = cds_app.test_client().post(
        SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
    )
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    with state.sessions() as session:
        served = session.scalars(select(Prediction).where(Prediction.role == "cds")).one()
        encounter = session.scalars(select(Encounter)).one()
        stored = stay_features(stay_input(session, encounter, served.as_of), served.as_of)
    assert card["uuid"] == served.public_id
    hours = (served.as_of - stay.admitted_at).total_seconds() / 3600
    assert stored["hours_since_admission"] == pytest.approx(hours)
    assert stored["hr_max_all"] < 160  # the old values would have been the maximum
    assert (stored["height_cm"], stored["weight_kg"]) == (171.5, 83.2)
    assert stored[f"unit_{stay.unit.lower()}"] == 1.0  # type: ignore[union-attr]
    assert served.features_digest == features_digest(stored)
    assert state.predictor is not None
    assert served.score == pytest.approx(state.predictor.score(stored).probability)


def test_no_stay_in_progress_gets_a_card_without_a_risk(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    _register_champion(cds_app, trained_model)
    observations = [_observation("8867-4", 128, "/min", 30)]
    client = cds_app.test_client()
    for encounters in ([_encounter(600, status="finished")], []):
        response = client.post(
            SERVICE, json=_hook(PATIENT, observations, encounters), headers=_auth(ehr_key)
        )
        assert response.status_code == 200, response.get_json()
        (card,) = response.get_json()["cards"]
        assert "no stay in progress" in card["summary"]
        assert "%" not in card["summary"]
        assert card["detail"].startswith("No encounter of this patient is in progress")
    # The encounter in context is not among the in-progress ones: the detail says "not".
    in_context = _hook(PATIENT, observations, [_encounter(600, eid="e1")])
    in_context["context"]["encounterId"] = "e2"
    (card,) = client.post(SERVICE, json=in_context, headers=_auth(ehr_key)).get_json()["cards"]
    assert "no stay in progress" in card["summary"]
    assert card["detail"].startswith("The encounter in context is not in progress")
    none = _hook(PATIENT, observations)
    none["prefetch"]["encounters"] = None  # CDS Hooks: the EHR had nothing for the query
    assert (
        "no stay"
        in client.post(SERVICE, json=none, headers=_auth(ehr_key)).get_json()["cards"][0]["summary"]
    )
    with get_state(cds_app).sessions() as session:
        from vitalcast.modeling.tables import Prediction

        assert session.scalars(select(Prediction)).first() is None
    rows = _audit_rows(cds_app)
    assert [(r.outcome, (r.details or {})["scored"]) for r in rows] == [("success", False)] * 4


@pytest.mark.parametrize("status", ["onleave", "arrived", "triaged"])
def test_a_stay_ingestion_holds_in_progress_is_scored_in_the_ehr_too(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any, status: str
) -> None:
    """An Encounter on leave (or arrived, triaged) without an end is a stay in progress to
    FHIR ingestion, scored on vitalcast's pages; the card said "no stay in progress"."""
    _register_champion(cds_app, trained_model)
    observations = [_observation("8867-4", 128, "/min", 30)]
    response = cds_app.test_client().post(
        SERVICE,
        json=_hook(PATIENT, observations, [_encounter(300, status=status)]),
        headers=_auth(ehr_key),
    )
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    assert card["summary"].startswith("ICU mortality risk ")
    assert "%" in card["summary"]


def test_an_admission_a_few_minutes_ahead_is_early_in_the_stay(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """An admission time up to the clock-drift tolerance in the future is accepted; the
    stay scored then was shown without the early caution (its hours were negative)."""
    _register_champion(cds_app, trained_model)
    body = _hook(PATIENT, [], [_encounter(-3)])
    response = cds_app.test_client().post(SERVICE, json=body, headers=_auth(ehr_key))
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    assert "early)" in card["summary"]
    assert card["detail"].startswith("Early in the stay: scored 0.0 h after admission")


def test_an_encounter_outside_the_model_population_gets_a_card_without_a_risk(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """An ambulatory visit, or a child's ICU stay, is not what the model learnt from: the
    card says why and carries no risk, and nothing is stored. The adult's ICU stay with
    the same observations is scored (the rule excludes, it does not break scoring)."""
    _register_champion(cds_app, trained_model)
    observations = [_observation("8867-4", 128, "/min", 30)]
    clinic = _encounter(600)
    clinic["class"]["code"] = "AMB"
    child = PATIENT | {"birthDate": f"{datetime.now(UTC).year - 7}-01-01"}
    client = cds_app.test_client()
    cards = []
    for patient, encounter in ((PATIENT, clinic), (child, _encounter(600))):
        response = client.post(
            SERVICE, json=_hook(patient, observations, [encounter]), headers=_auth(ehr_key)
        )
        assert response.status_code == 200, response.get_json()
        (card,) = response.get_json()["cards"]
        assert "not computed" in card["summary"]
        assert "%" not in card["summary"]
        cards.append(card["detail"])
    assert cards[0].startswith("An outpatient visit is outside what the model scores")
    assert cards[1].startswith("A patient aged ")
    assert "aged 15 or over" in cards[1]
    with get_state(cds_app).sessions() as session:
        from vitalcast.modeling.tables import Prediction

        assert session.scalars(select(Prediction)).first() is None
    rows = _audit_rows(cds_app)
    # The encounter's kind is audited (the child's ACUTE stay is a hospital stay).
    assert [(r.details or {}).get("outside_population") for r in rows] == [
        "outpatient",
        "inpatient",
    ]
    adult = client.post(
        SERVICE, json=_hook(PATIENT, observations, [_encounter(600)]), headers=_auth(ehr_key)
    )
    assert adult.get_json()["cards"][0]["summary"].startswith("ICU mortality risk ")


def test_only_a_signed_ehr_request_makes_vitalcast_read_a_fhir_server(
    cds_app: Flask, creds: Credentials, app: Flask, trained_model: Any
) -> None:
    """An API key (even a data scientist's) or a browser session cannot point vitalcast
    at a URL: no request leaves, the answer is 412 and the attempt is audited."""
    _register_champion(cds_app, trained_model)
    canary = FakeFhir({})
    with _served(canary.app) as base:
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": f"{base}/fhir",
            "fhirAuthorization": {"access_token": "secret-token", "token_type": "Bearer"},
            "context": {"userId": "Practitioner/1", "patientId": "mrn-4711"},
        }
        creds_cds = Credentials(cds_app)
        key = creds_cds.api_key("data_scientist")
        by_key = cds_app.test_client().post(SERVICE, json=body, headers=key)
        browser = cds_app.test_client()
        creds_cds.user("nina", "nurse")
        csrf = creds_cds.login(browser, "nina")
        by_session = browser.post(SERVICE, json=body, headers={"X-CSRF-Token": csrf})
        # With complete prefetch the same key gets its card, and fhirServer is not read.
        complete = _hook(PATIENT, [_observation("8867-4", 128, "/min", 30)], [_encounter(600)])
        complete |= {k: body[k] for k in ("fhirServer", "fhirAuthorization")}
        prefetched = cds_app.test_client().post(SERVICE, json=complete, headers=key)
    assert canary.requests == []
    assert prefetched.status_code == 200, prefetched.get_json()
    assert prefetched.get_json()["cards"][0]["summary"].startswith("ICU mortality risk ")
    for response in (by_key, by_session):
        assert response.status_code == 412, response.get_json()
        message = response.get_json()["error"]["message"]
        assert "signed by a trusted EHR" in message
        assert "mrn-4711" not in response.get_data(as_text=True)
        assert base not in response.get_data(as_text=True)
    *rows, success = _audit_rows(cds_app)
    assert (success.outcome, success.details["fhir_server_read"]) == ("success", False)
    assert [(r.outcome, r.details["error"]) for r in rows] == [
        ("failure", "precondition_failed")
    ] * 2
    for row in rows:
        text = json.dumps(row.details)
        assert "mrn-4711" not in text
        assert base not in text
        assert row.patient_id is None
        assert len(row.details["ehr_patient"]) == 32
    assert rows[0].details["ehr_patient"] == rows[1].details["ehr_patient"]


def test_fhir_server_failures_say_what_failed_without_url_or_patient(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    _register_champion(cds_app, trained_model)
    fake = FakeFhir({})  # every read answers 404
    with _served(fake.app) as base:
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": f"{base}/fhir",
            "fhirAuthorization": {"access_token": "ehr-token", "token_type": "Bearer"},
            "context": {"userId": "Practitioner/1", "patientId": "mrn-4711"},
        }
        response = cds_app.test_client().post(
            SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
        )
    assert response.status_code == 412
    error = response.get_json()["error"]
    assert error["message"] == "the EHR's FHIR server answered 404 for the Patient resource"
    assert "mrn-4711" not in response.get_data(as_text=True)
    assert base not in response.get_data(as_text=True)
    assert fake.requests == [("fhir/Patient/mrn-4711", {}, "Bearer ehr-token")]
    (row,) = _audit_rows(cds_app)
    assert (row.outcome, row.details["reason"]) == ("failure", error["message"])
    assert row.details["fhir_server_read"] is True
    assert "mrn-4711" not in json.dumps(row.details)


def test_paging_stays_on_the_fhir_server_and_is_never_cut_short(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any, creds: Credentials, app: Flask
) -> None:
    """A next-page link to another server is not followed (the token stays on fhirServer);
    a paged prefetch from an unsigned caller is refused rather than scored in part."""
    _register_champion(cds_app, trained_model)
    elsewhere = FakeFhir({"steal": (200, {"resourceType": "Bundle", "type": "searchset"})})
    with _served(elsewhere.app) as other:
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": f"{other}/steal"}],
            "entry": [{"resource": _observation("8867-4", 128, "/min", 30)}],
        }
        ehr = FakeFhir({"fhir/Observation": (200, page)})
        with _served(ehr.app) as base:
            body = _hook(PATIENT, None, [_encounter(600)])
            body["fhirServer"] = f"{base}/fhir"
            body["fhirAuthorization"] = {"access_token": "ehr-token", "token_type": "Bearer"}
            signed = cds_app.test_client().post(
                SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
            )
    assert signed.status_code == 412
    assert "outside fhirServer" in signed.get_json()["error"]["message"]
    assert elsewhere.requests == []
    ((path, params, auth),) = ehr.requests
    assert (path, params["_sort"], params["date"][:2], auth) == (
        "fhir/Observation",
        "-date",
        "ge",
        "Bearer ehr-token",
    )
    paged = _hook(PATIENT, None, [_encounter(600)])
    paged["prefetch"]["observations"] = {**page, "link": [{"relation": "next", "url": "x"}]}
    unsigned = cds_app.test_client().post(
        SERVICE, json=paged, headers=Credentials(cds_app).api_key("integration")
    )
    assert unsigned.status_code == 412
    assert "Observation search" in unsigned.get_json()["error"]["message"]


def test_tls_to_the_pinned_address_is_verified_against_the_host_name(tmp_path: Path) -> None:
    """The reader connects to the checked address, but TLS must still prove the name in
    fhirServer: a certificate for the bare address (what a rebinding attacker could
    present) is refused."""
    import ipaddress
    import ssl

    from cryptography import x509

    from tests.tls_helpers import self_signed_certificate
    from vitalcast.errors import PreconditionFailed
    from vitalcast.serving.cds_fhir import FhirReader, FhirTarget

    fake = FakeFhir({"fhir/Patient/p1": (200, PATIENT)})
    for folder, names in (
        ("named", [x509.DNSName("localhost")]),
        ("bare", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
    ):
        cert, key = self_signed_certificate(tmp_path / folder, names=names)
        server = make_server("127.0.0.1", 0, fake.app, threaded=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        target = FhirTarget("https", "localhost", server.server_port, "/fhir", "127.0.0.1")
        trust = ssl.create_default_context(cafile=str(cert))
        try:
            with FhirReader(target, "tok", verify=trust) as reader:
                if folder == "named":
                    assert reader.read("Patient resource", "Patient/p1")["id"] == "p1"
                else:
                    with pytest.raises(PreconditionFailed, match="could not be reached"):
                        reader.read("Patient resource", "Patient/p1")
        finally:
            server.shutdown()
            thread.join(timeout=5)
    assert [path for path, _args, _auth in fake.requests] == ["fhir/Patient/p1"]


def obs_all_last(client: FlaskClient, patient: str, headers: dict[str, str]) -> str:
    """The latest effective time of the patient's observations, in ascending order."""
    entries = client.get(f"/fhir/Observation?patient={patient}", headers=headers).get_json()
    return str(entries["entry"][-1]["resource"]["effectiveDateTime"])


# Robustness: bad input gets a 4xx saying what was wrong and where, never a 500, never a
# silent drop, and no patient identifier in messages or logs.

WHO = "mrn-4711"  # a patient id that must never be echoed


def _who_hook(**prefetch: Any) -> dict[str, Any]:
    """A well-formed request for patient :data:`WHO` with ``prefetch`` overriding keys."""
    encounter = {**_encounter(300), "subject": {"reference": f"Patient/{WHO}"}}
    observation = {
        **_observation("8867-4", 128, "/min", 30),
        "subject": {"reference": f"Patient/{WHO}"},
    }
    body = _hook({**PATIENT, "id": WHO}, [observation], [encounter])
    body["prefetch"].update(prefetch)
    return body


def _bundle(*resources: Any, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
        **fields,
    }


def _who_encounter(**fields: Any) -> dict[str, Any]:
    return {**_encounter(300), "subject": {"reference": f"Patient/{WHO}"}, **fields}


MALFORMED_PREFETCH = [
    # (case, prefetch override, loc of the (first) problem, what its msg says)
    ("observations a list", {"observations": [1, 2]}, ["observations"], "FHIR resource"),
    (
        "observation entries not objects",
        {"observations": _bundle() | {"entry": [1, 2]}},
        ["observations", "entry", 0],
        "object",
    ),
    (
        "observation entry a string",
        {"observations": _bundle() | {"entry": "x"}},
        ["observations", "entry"],
        "list",
    ),
    (
        "observation link not a list",
        {"observations": _bundle(link=5)},
        ["observations", "link"],
        "list",
    ),
    (
        "resource not an object",
        {"observations": _bundle() | {"entry": [{"resource": "x"}]}},
        ["observations", "entry", 0, "resource"],
        "FHIR resource",
    ),
    (
        "a Patient among observations",
        {"observations": _bundle({**PATIENT, "id": WHO})},
        ["observations", "entry", 0, "resource", "resourceType"],
        "Observation",
    ),
    (
        "observations not a Bundle",
        {"observations": {**PATIENT, "id": WHO}},
        ["observations"],
        "search Bundle",
    ),
    ("encounters a string", {"encounters": "Encounter?patient=x"}, ["encounters"], "FHIR resource"),
    ("patient a reference string", {"patient": f"Patient/{WHO}"}, ["patient"], "FHIR resource"),
    ("patient a list", {"patient": [1]}, ["patient"], "FHIR resource"),
    (
        "patient an Observation",
        {"patient": {**_observation("8867-4", 1, "/min", 1), "id": WHO}},
        ["patient"],
        "Patient resource",
    ),
    (
        "patient another one",
        {"patient": {**PATIENT, "id": "p2"}},
        ["patient", "id"],
        "patient in context",
    ),
    (
        "birth date not a date",
        {"patient": {**PATIENT, "id": WHO, "birthDate": "not-a-date"}},
        ["patient"],
        "Patient.birthDate",
    ),
    (
        "birth date in the future",
        {"patient": {**PATIENT, "id": WHO, "birthDate": "2190-01-01"}},
        ["patient"],
        "Patient.birthDate: is in the future",
    ),
    (
        "gender not a FHIR code",
        {"patient": {**PATIENT, "id": WHO, "gender": "F"}},
        ["patient"],
        "Patient.gender",
    ),
    (
        "gender a list",  # was a 500: a list is not hashable
        {"patient": {**PATIENT, "id": WHO, "gender": ["male"]}},
        ["patient"],
        "Patient.gender",
    ),
    (
        "admission without a time",
        {"encounters": _bundle(_who_encounter(period={"start": "2026-01-01"}))},
        ["encounters", "entry", 0, "resource"],
        "Encounter.period.start has no time of day",
    ),
    (
        "admission in the future",
        {
            "encounters": _bundle(
                _who_encounter(),
                {**_who_encounter(id="e2"), "period": {"start": "2190-01-01T00:00:00Z"}},
            )
        },
        ["encounters", "entry", 1, "resource"],
        "admission time in the future",
    ),
    (
        "stay of another patient",
        {"encounters": _bundle(_encounter(300))},
        ["encounters", "entry", 0, "resource"],
        "another patient",
    ),
    (
        "encounter status a list",  # was passed over: "no stay in progress"
        {"encounters": _bundle(_who_encounter(), {**_who_encounter(id="e2"), "status": ["x"]})},
        ["encounters", "entry", 1, "resource"],
        "Encounter.status",
    ),
    (
        "encounter status not an R4 code",
        {"encounters": _bundle({**_who_encounter(), "status": "In-Progress"})},
        ["encounters", "entry", 0, "resource"],
        "Encounter.status",
    ),
]


@pytest.mark.parametrize(
    ("case", "prefetch", "loc", "msg"), MALFORMED_PREFETCH, ids=[c[0] for c in MALFORMED_PREFETCH]
)
def test_malformed_prefetch_is_a_400_that_says_where(
    cds_app: Flask,
    ehr_key: RSAKey,
    trained_model: Any,
    capsys: pytest.CaptureFixture[str],
    case: str,
    prefetch: dict[str, Any],
    loc: list[Any],
    msg: str,
) -> None:
    """Shapes the service cannot read were a 500 (``[1, 2]``), or were taken as "not
    sent" and scored from the rest (a Patient that is a string, a birth date that is not
    a date): a risk without age or observations, with nothing saying so. Even a signed
    request naming fhirServer gets 400 rather than a read of the server."""
    _register_champion(cds_app, trained_model)
    canary = FakeFhir({})
    with _served(canary.app) as base:
        body = _who_hook(**prefetch)
        body["fhirServer"] = f"{base}/fhir"
        response = cds_app.test_client().post(
            SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
        )
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    problem = next(d for d in error["details"] if d["loc"] == ["body", "prefetch", *loc])
    assert msg in problem["msg"]
    assert msg in error["message"]  # the message alone says what and where
    assert canary.requests == []
    text = response.get_data(as_text=True)
    for secret in (WHO, "not-a-date", "2190-01-01", "2026-01-01"):
        assert secret not in text
    (row,) = _audit_rows(cds_app)
    assert (row.outcome, row.details["error"]) == ("failure", "bad_request")
    assert WHO not in json.dumps(row.details)
    with get_state(cds_app).sessions() as session:
        from vitalcast.modeling.tables import Prediction

        assert session.scalars(select(Prediction)).first() is None
    assert '"level": "ERROR"' not in capsys.readouterr().out


def test_left_out_observations_are_counted_on_the_card(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """Observations the FHIR adapter or the ingestion rules reject used to vanish without
    a word; the card now says how many of a kind the model uses were left out (codes it
    does not use, withdrawn results and earlier stays are not "left out")."""
    _register_champion(cds_app, trained_model)
    good = [_observation("8867-4", 128, "/min", 30), _observation("2524-7", 4.1, "mmol/L", 60)]
    clean = cds_app.test_client().post(
        SERVICE, json=_hook(PATIENT, good, [_encounter(300)]), headers=_auth(ehr_key)
    )
    assert "Left out" not in clean.get_json()["cards"][0]["detail"]
    unreadable = _observation("8867-4", 128, "/min", 20)
    unreadable["valueQuantity"]["value"] = "128 bpm"  # not a FHIR decimal
    no_time = {
        k: v
        for k, v in _observation("2524-7", 3.0, "mmol/L", 20).items()
        if k != "effectiveDateTime"
    }
    # Lax FHIR validation passes both; a string was read as the number, null was a 500.
    text_number = _observation("8867-4", 128, "/min", 25)
    text_number["valueQuantity"]["value"] = "128"
    null_value = {**_observation("2524-7", 3.0, "mmol/L", 25), "valueQuantity": None}
    implausible = _observation("8867-4", 9999, "/min", 20)
    other = {**_observation("8867-4", 90, "/min", 20), "subject": {"reference": "Patient/p9"}}
    not_used = _observation("72514-3", 4, "{score}", 20)  # pain score: not a model input
    withdrawn = {**_observation("8867-4", 200, "/min", 20), "status": "entered-in-error"}
    earlier = _observation("8867-4", 170, "/min", 600)  # before this admission
    observations = [*good, unreadable, no_time, text_number, null_value, implausible, other]
    observations += [not_used, withdrawn, earlier]
    patient = {**PATIENT, "birthDate": "1950"}  # a valid but partial date: no age
    response = cds_app.test_client().post(
        SERVICE, json=_hook(patient, observations, [_encounter(300)]), headers=_auth(ehr_key)
    )
    assert response.status_code == 200, response.get_json()
    detail = response.get_json()["cards"][0]["detail"]
    assert (
        "Left out of this risk: 4 observations that could not be read, 1 observation"
        " outside the plausibility rules (value, unit or time), 1 observation of another"
        " patient." in detail
    )
    assert "Age unknown: the Patient resource has no full birth date." in detail
    *_clean, row = _audit_rows(cds_app)
    assert row.details["left_out"] == {"unreadable": 4, "implausible": 1, "other_patient": 1}
    assert row.details["unreadable"] == {"invalid_resource": 1, "no_time": 1, "invalid_value": 2}


def test_a_fhir_server_answer_with_a_malformed_bundle_is_a_412(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """The same Bundle checks hold for what fhirServer answers; it is the EHR server's
    fault, not the caller's, hence 412 (the data cannot be obtained)."""
    _register_champion(cds_app, trained_model)
    page = {"resourceType": "Bundle", "type": "searchset", "entry": "x", "link": 5}
    ehr = FakeFhir({"fhir/Observation": (200, page)})
    with _served(ehr.app) as base:
        body = _hook(PATIENT, None, [_encounter(600)])
        body["fhirServer"] = f"{base}/fhir"
        body["fhirAuthorization"] = {"access_token": "ehr-token", "token_type": "Bearer"}
        response = cds_app.test_client().post(
            SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
        )
    assert response.status_code == 412, response.get_json()
    assert response.get_json()["error"]["message"] == (
        "the EHR's FHIR server answered the Observation search with a malformed Bundle"
        " (Bundle.entry: must be a list of entries)"
    )


def _feedback_item(**fields: Any) -> dict[str, Any]:
    item = {
        "card": str(uuid.uuid4()),
        "outcome": "overridden",
        "outcomeTimestamp": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }
    return {k: v for k, v in {**item, **fields}.items() if v is not None}


COMMENT = "Jane Doe refused, see her chart"  # free text that may name a patient
BAD_FEEDBACK = [
    (
        "card too long for its column",
        _feedback_item(card="c" * 65, overrideReason={"userComment": COMMENT}),
        ["card"],
        "at most 64 characters",
    ),
    ("card missing", {**_feedback_item(), "card": None}, ["card"], "required string"),
    ("card not a string", _feedback_item(card=12), ["card"], "must be a string"),
    ("outcome unknown", _feedback_item(outcome="ignored"), ["outcome"], "accepted or overridden"),
    (
        "timestamp a number",
        _feedback_item(outcomeTimestamp=1700000000),
        ["outcomeTimestamp"],
        "ISO 8601",
    ),
    (
        "timestamp a date only",
        _feedback_item(outcomeTimestamp="2026-01-01"),
        ["outcomeTimestamp"],
        "ISO 8601",
    ),
    (
        "timestamp no such day",
        _feedback_item(outcomeTimestamp="2026-02-30T00:00:00Z"),
        ["outcomeTimestamp"],
        "ISO 8601",
    ),
    (
        "timestamp out of range",
        _feedback_item(outcomeTimestamp="0001-01-01T00:00:00+14:00"),
        ["outcomeTimestamp"],
        "outside the accepted range 1800-2200",
    ),
    (
        "timestamp beyond the year range",
        _feedback_item(outcomeTimestamp="2999-01-01T00:00:00Z"),
        ["outcomeTimestamp"],
        "outside the accepted range 1800-2200",
    ),
    (
        "timestamp in the future",
        _feedback_item(outcomeTimestamp="2190-01-01T00:00:00Z"),
        ["outcomeTimestamp"],
        "future",
    ),
    (
        "override reason a string",
        _feedback_item(overrideReason=COMMENT),
        ["overrideReason"],
        "must be an object",
    ),
    (
        "reason not a Coding",
        _feedback_item(overrideReason={"reason": COMMENT}),
        ["overrideReason", "reason"],
        "Coding",
    ),
    (
        "reason code too long",
        _feedback_item(overrideReason={"reason": {"code": "x" * 301}}),
        ["overrideReason", "reason", "code"],
        "at most 300",
    ),
    (
        "reason display not text",
        _feedback_item(overrideReason={"reason": {"display": ["x"]}}),
        ["overrideReason", "reason", "display"],
        "must be a string",
    ),
    (
        "comment too long",
        _feedback_item(overrideReason={"userComment": COMMENT * 40}),
        ["overrideReason", "userComment"],
        "at most 1000",
    ),
    (
        "comment not text",
        _feedback_item(overrideReason={"userComment": {"text": COMMENT}}),
        ["overrideReason", "userComment"],
        "must be a string",
    ),
    (
        "override reason of an accepted card",
        _feedback_item(outcome="accepted", overrideReason={"userComment": COMMENT}),
        ["overrideReason"],
        "only with outcome overridden",
    ),
    (
        "suggestions not a list",
        _feedback_item(outcome="accepted", acceptedSuggestions="x"),
        ["acceptedSuggestions"],
        "list of objects",
    ),
    (
        "suggestions this service never made",
        _feedback_item(outcome="accepted", acceptedSuggestions=[{"id": "s1"}]),
        ["acceptedSuggestions"],
        "no suggestions",
    ),
    ("item not an object", [COMMENT], [], "must be an object"),
]


@pytest.mark.parametrize(
    ("case", "item", "loc", "msg"), BAD_FEEDBACK, ids=[c[0] for c in BAD_FEEDBACK]
)
def test_bad_feedback_is_a_400_that_names_the_field_not_the_text(
    cds_app: Flask,
    ehr_key: RSAKey,
    capsys: pytest.CaptureFixture[str],
    case: str,
    item: Any,
    loc: list[Any],
    msg: str,
) -> None:
    """A card id longer than its column was a 500 whose log line carried the SQL
    parameters, free-text comment included. Every field is checked, with a message that
    names the field and the rule; nothing of the request is stored."""
    good = _feedback_item(outcome="accepted")
    items = [good, item[0]] if isinstance(item, list) else [good, item]
    response = cds_app.test_client().post(
        f"{SERVICE}/feedback",
        json={"feedback": items},
        headers={"Authorization": f"Bearer {_token(ehr_key)}"},
    )
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert [d["loc"] for d in error["details"]] == [["body", "feedback", 1, *loc]]
    assert msg in error["details"][0]["msg"]
    assert msg in error["message"]
    assert "Jane Doe" not in response.get_data(as_text=True)
    logged = capsys.readouterr().out
    assert "Jane Doe" not in logged
    assert '"level": "ERROR"' not in logged
    with get_state(cds_app).sessions() as session:
        assert session.scalars(select(CdsFeedback)).first() is None


def test_feedback_limits_and_unknown_services(cds_app: Flask, ehr_key: RSAKey) -> None:
    """Feedback for a service that does not exist is 404 (it was stored, while the
    service itself answered 404); values at their column's length are stored whole."""
    client = cds_app.test_client()
    unknown = "/cds-services/no-such-service"
    response = client.post(
        f"{unknown}/feedback",
        json={"feedback": [_feedback_item()]},
        headers={"Authorization": f"Bearer {_token(ehr_key, aud=BASE + unknown)}"},
    )
    assert response.status_code == 404, response.get_json()
    assert response.get_json()["error"]["message"] == "no CDS service 'no-such-service'"
    many = client.post(
        f"{SERVICE}/feedback", json={"feedback": [_feedback_item()] * 101}, headers=_auth(ehr_key)
    )
    assert many.status_code == 400
    assert many.get_json()["error"]["message"] == "at most 100 feedback items per request"
    full = _feedback_item(
        card="c" * 64,
        overrideReason={"reason": {"code": "r" * 300}, "userComment": "x" * 1000},
        outcomeTimestamp="2026-01-01T10:00:00",  # no offset: taken as UTC
    )
    stored = client.post(f"{SERVICE}/feedback", json={"feedback": [full]}, headers=_auth(ehr_key))
    assert stored.status_code == 200, stored.get_json()
    with get_state(cds_app).sessions() as session:
        (row,) = session.scalars(select(CdsFeedback))
    assert (row.card_uuid, row.override_reason, row.user_comment) == (
        "c" * 64,
        "r" * 300,
        "x" * 1000,
    )
    assert row.outcome_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_database_errors_do_not_carry_the_statement_parameters(cds_app: Flask) -> None:
    """Should a value ever reach the database unchecked, the error (which is logged with
    its traceback) names the statement, not the patient data in its parameters."""
    from sqlalchemy.exc import DBAPIError

    with get_state(cds_app).sessions() as session:
        session.add(
            CdsFeedback(
                service_id=SERVICE_ID,
                card_uuid="c" * 65,
                outcome="overridden",
                user_comment=COMMENT,
                outcome_at=datetime.now(UTC),
                client="test",
            )
        )
        with pytest.raises(DBAPIError) as caught:
            session.commit()
    assert "cds_feedback" in str(caught.value)
    assert "Jane Doe" not in str(caught.value)


def test_an_ehr_on_a_listed_private_network_is_contacted_and_no_other(
    settings: Settings, ehr_key: RSAKey, tmp_path: Path, trained_model: Any
) -> None:
    """Through the whole app: an EHR's fhirServer on a private address is refused until
    its network is listed in VITALCAST_CDS_FHIR_NETWORKS; then vitalcast connects to it
    (here nothing answers at that address, so the card fails on the connection, not on
    the policy), and a private address outside the listed network is still refused."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ehr_key.as_dict(private=False)]}))
    trusted = {"cds_trusted_issuers": {ISSUER: str(jwks)}}
    messages = {}
    for name, networks, server in (
        ("unlisted", [], "https://10.255.255.1:9/fhir"),
        ("listed", ["10.255.255.0/24"], "https://10.255.255.1:9/fhir"),
        ("outside", ["10.255.255.0/24"], "https://10.255.254.1:9/fhir"),
    ):
        app = create_app(settings.model_copy(update=trusted | {"cds_fhir_networks": networks}))
        try:
            if name == "unlisted":  # one database: the later apps load the same champion
                _register_champion(app, trained_model)
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": server,
                "fhirAuthorization": {"access_token": "ehr-token", "token_type": "Bearer"},
                "context": {"userId": "Practitioner/1", "patientId": "p1"},
            }
            response = app.test_client().post(
                SERVICE, json=body, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
            )
            assert response.status_code == 412, response.get_json()
            messages[name] = response.get_json()["error"]["message"]
        finally:
            get_state(app).close()
    assert "VITALCAST_CDS_FHIR_NETWORKS" in messages["unlisted"]
    assert "could not be reached" in messages["listed"]
    assert "VITALCAST_CDS_FHIR_NETWORKS" in messages["outside"]


def test_feedback_is_in_the_trail_of_the_patient_the_card_was_for(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    from vitalcast.clinical.records import PatientRecord, RecordBatch
    from vitalcast.clinical.tables import Patient
    from vitalcast.db import session_scope
    from vitalcast.ingest.service import store_batch
    from vitalcast.security.audit import AuditFilter

    _register_champion(cds_app, trained_model)
    state = get_state(cds_app)
    with session_scope(state.sessions) as session:  # the EHR's patient, as FHIR ingestion keys it
        batch = RecordBatch(patients=[PatientRecord(ref="Patient/p1")])
        store_batch(session, batch, source="fhir", location="t", cipher=state.cipher)
    with state.sessions() as session:
        public_id = session.scalars(select(Patient.public_id)).one()
    client = cds_app.test_client()
    observations = [_observation("8867-4", 128, "/min", 30)]
    response = client.post(
        SERVICE,
        json=_hook(PATIENT, observations, [_encounter(300)]),
        headers={"Authorization": f"Bearer {_token(ehr_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    (card,) = response.get_json()["cards"]
    unknown = str(uuid.uuid4())
    feedback = {
        "feedback": [
            {"card": card["uuid"], "outcome": "accepted"},
            {"card": unknown, "outcome": "accepted"},
        ]
    }
    stored = client.post(
        f"{SERVICE}/feedback", json=feedback, headers={"Authorization": f"Bearer {_token(ehr_key)}"}
    )
    assert stored.status_code == 200, stored.get_json()
    with state.sessions() as session:
        (view,) = session.scalars(select(AuditEvent).where(AuditEvent.event == "cds.patient-view"))
        given = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "cds.feedback").order_by(AuditEvent.id)
        ).all()
        trail = session.scalars(
            AuditFilter(patient_id=public_id).apply(
                select(AuditEvent.event).order_by(AuditEvent.id)
            )
        ).all()
    assert view.details["card"] == card["uuid"]
    # The card's feedback names the patient as its patient-view event did; feedback on a
    # card this service never issued names nobody.
    assert [(e.patient_id, e.details) for e in given] == [
        (public_id, {"cards": [card["uuid"]], "ehr_patient": view.details["ehr_patient"]}),
        (None, {"cards": [unknown]}),
    ]
    assert view.patient_id == public_id
    assert trail == ["ingest.batch", "cds.patient-view", "cds.feedback"]
    # "Open in vitalcast" opens this patient's page, not the ward list.
    assert card["links"][0]["url"] == f"http://localhost/patients/{public_id}"


def _store_hl7_patients(app: Flask, *patients: Any) -> dict[str, str]:
    """Store HL7-admitted patients (no FHIR id); their public ids by MRN."""
    from vitalcast.clinical.records import RecordBatch
    from vitalcast.clinical.tables import Patient
    from vitalcast.db import session_scope
    from vitalcast.ingest.service import store_batch

    state = get_state(app)
    with session_scope(state.sessions) as session:
        batch = RecordBatch(patients=list(patients))
        store_batch(session, batch, source="hl7v2", location="t", cipher=state.cipher)
    with state.sessions() as session:
        return {
            p.mrn: session.scalar(
                select(Patient.public_id).where(Patient.mrn_hmac == state.cipher.mrn_hash(p.mrn))
            )
            for p in patients
        }


def test_a_patient_stored_from_hl7_is_found_by_the_mrn(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """A patient admitted by HL7 v2 has no FHIR id in the store: the EHR's Patient
    resource is matched by its MRN, as ingestion matches patients across sources, so the
    card links to the patient's page and the audit names the patient."""
    from vitalcast.clinical.records import PatientRecord

    _register_champion(cds_app, trained_model)
    public_id = _store_hl7_patients(
        cds_app,
        PatientRecord(ref="hl7-a", mrn="MRN-CDS-1"),
        PatientRecord(ref="hl7-b", mrn="MRN-CDS-2"),
    )["MRN-CDS-1"]
    links = _card_links(cds_app, ehr_key, " mrn-cds-1", "MRN-ELSEWHERE")
    assert links == [f"http://localhost/patients/{public_id}", "http://localhost/ward"]
    assert [e.patient_id for e in _audit_rows(cds_app)] == [public_id, None]


def test_a_stored_patient_with_the_mrn_but_another_birth_date_is_not_linked(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """The MRN alone linked the card and the audit to the stored patient holding it, so a
    second person sharing the MRN (another assigning authority) got the first one's page.
    A birth date that contradicts the stored one now leaves the card on the ward list;
    an agreeing one still links."""
    from vitalcast.clinical.records import PatientRecord

    _register_champion(cds_app, trained_model)
    born = date.fromisoformat(PATIENT["birthDate"])
    public_id = _store_hl7_patients(
        cds_app,
        PatientRecord(ref="hl7-c", mrn="MRN-CDS-3", birth_date=born),
        PatientRecord(ref="hl7-d", mrn="MRN-CDS-4", birth_date=date(1961, 1, 1)),
    )["MRN-CDS-3"]
    links = _card_links(cds_app, ehr_key, "MRN-CDS-3", "MRN-CDS-4")
    assert links == [f"http://localhost/patients/{public_id}", "http://localhost/ward"]
    assert [e.patient_id for e in _audit_rows(cds_app)] == [public_id, None]


def test_a_stored_patient_with_the_fhir_id_but_another_mrn_is_not_linked(
    cds_app: Flask, ehr_key: RSAKey, trained_model: Any
) -> None:
    """FHIR ids are a server's own numbering ("Patient/p1" from a feed server and from the
    EHR may be two people): when the stored patient with the EHR's id has another MRN
    than the EHR's Patient, the card linked to that other person's page and the audit
    named them. The MRN decides: the ward list, and no patient named."""
    from vitalcast.clinical.records import PatientRecord, RecordBatch
    from vitalcast.clinical.tables import Patient
    from vitalcast.db import session_scope
    from vitalcast.ingest.service import store_batch

    _register_champion(cds_app, trained_model)
    state = get_state(cds_app)
    with session_scope(state.sessions) as session:
        batch = RecordBatch(patients=[PatientRecord(ref="Patient/p1", mrn="MRN-FEED-1")])
        store_batch(session, batch, source="fhir", location="t", cipher=state.cipher)
    with state.sessions() as session:
        public_id = session.scalar(select(Patient.public_id))
    links = _card_links(cds_app, ehr_key, "MRN-EHR-7", "mrn-feed-1")
    assert links == ["http://localhost/ward", f"http://localhost/patients/{public_id}"]
    assert [e.patient_id for e in _audit_rows(cds_app)] == [None, public_id]


def _card_links(app: Flask, ehr_key: RSAKey, *mrns: str) -> list[str]:
    """The card's 'Open in vitalcast' link for patient p1 sent with each MRN in turn."""
    client = app.test_client()
    observations = [_observation("8867-4", 128, "/min", 30)]
    links = []
    for mrn in mrns:
        patient = {**PATIENT, "identifier": [_mrn_identifier(mrn)]}
        response = client.post(
            SERVICE,
            json=_hook(patient, observations, [_encounter(300)]),
            headers={"Authorization": f"Bearer {_token(ehr_key)}"},
        )
        assert response.status_code == 200, response.get_json()
        links.append(response.get_json()["cards"][0]["links"][0]["url"])
    return links


def _mrn_identifier(mrn: str) -> dict[str, Any]:
    return {
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
        },
        "value": mrn,
    }


def test_feedback_from_another_ehr_is_not_linked_to_a_card_it_was_not_shown(
    settings: Settings, ehr_key: RSAKey, trained_model: Any, tmp_path: Path
) -> None:
    """Two trusted EHRs: the second's feedback naming the first's card is stored, but not
    as a verdict on that card's prediction, nor in its patient's trail."""
    from vitalcast.modeling.tables import Prediction

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ehr_key.as_dict(private=False)]}))
    other = "https://other-ehr.example.org"
    app = create_app(
        settings.model_copy(update={"cds_trusted_issuers": {ISSUER: str(jwks), other: str(jwks)}})
    )
    try:
        _register_champion(app, trained_model)
        client = app.test_client()
        response = client.post(
            SERVICE,
            json=_hook(PATIENT, [_observation("8867-4", 128, "/min", 30)], [_encounter(300)]),
            headers={"Authorization": f"Bearer {_token(ehr_key)}"},
        )
        assert response.status_code == 200, response.get_json()
        (card,) = response.get_json()["cards"]
        for iss in (other, ISSUER):
            stored = client.post(
                f"{SERVICE}/feedback",
                json={"feedback": [{"card": card["uuid"], "outcome": "accepted"}]},
                headers={"Authorization": f"Bearer {_token(ehr_key, iss=iss)}"},
            )
            assert stored.status_code == 200, stored.get_json()
        with get_state(app).sessions() as session:
            rows = session.scalars(select(CdsFeedback).order_by(CdsFeedback.id)).all()
            prediction = session.scalars(select(Prediction.id)).one()
            given = session.scalars(
                select(AuditEvent).where(AuditEvent.event == "cds.feedback").order_by(AuditEvent.id)
            ).all()
        assert [(r.client, r.prediction_id) for r in rows] == [
            (other, None),
            (ISSUER, prediction),
        ]
        assert ["ehr_patient" in e.details for e in given] == [False, True]
    finally:
        get_state(app).close()
