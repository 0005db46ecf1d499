"""The prediction and patient API on real PostgreSQL with a trained model."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.features.labels import describe_feature
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import early_in_stay
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.state import get_state


def test_ward_list_sorted_by_risk_with_pagination(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("integration")
    first = client.get("/api/v1/patients?limit=10", headers=headers).get_json()
    second = client.get("/api/v1/patients?limit=10&offset=10", headers=headers).get_json()
    assert first["total"] == len(ward) == 25
    scores = [p["risk"]["probability"] for p in first["items"] + second["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert first["items"][0]["identifiers"] is None  # integration keys never see identifiers


def test_identifiers_only_for_roles_allowed(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    clinician = client.get("/api/v1/patients?limit=1", headers=creds.api_key("clinician"))
    scientist = client.get("/api/v1/patients?limit=1", headers=creds.api_key("data_scientist"))
    assert clinician.get_json()["items"][0]["identifiers"]["mrn"]
    assert scientist.get_json()["items"][0]["identifiers"] is None


def test_predict_feature_vector(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    predictor = get_state(app).predictor
    assert predictor is not None
    features = {name: None for name in predictor.feature_names}
    response = client.post("/api/v1/predict", json=features, headers=creds.api_key("integration"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert 0.0 < body["probability"] < 1.0
    assert body["model_version"] == predictor.version
    assert body["band"] in ("low", "medium", "high", "critical")
    assert set(body["missing"]) == set(predictor.feature_names)
    # The response equals the model's own probability for the same row.
    expected = predictor.model.predict_proba_row({n: math.nan for n in predictor.feature_names})
    assert abs(body["probability"] - expected) < 1e-6
    assert body["early"] is None  # no hours since admission: not known to be early
    # Each factor carries what the patient page shows: its clinical phrase.
    assert body["factors"]
    for factor in body["factors"]:
        assert factor["text"] == describe_feature(factor["feature"], factor["value"])
    assert predictor.task == "icu-mortality"
    for hours, early in ((2.0, {"hours": 2.0, "first_landmark_h": 3.0}), (10.0, None)):
        timed = {**features, "hours_since_admission": hours}
        answer = client.post("/api/v1/predict", json=timed, headers=creds.api_key("integration"))
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["early"] == early
    # Hours before admission: not a risk of the stay (it was scored, with early null).
    before = {**features, "hours_since_admission": -5}
    refused = client.post("/api/v1/predict", json=before, headers=creds.api_key("integration"))
    assert refused.status_code == 422
    assert [d["loc"] for d in refused.get_json()["error"]["details"]] == [
        ["body", "hours_since_admission"]
    ]
    batch = client.post(
        "/api/v1/predict/batch",
        json={"rows": [features, before]},
        headers=creds.api_key("integration"),
    )
    assert batch.status_code == 422
    assert [d["loc"] for d in batch.get_json()["error"]["details"]] == [
        ["body", "rows", 1, "hours_since_admission"]
    ]


def test_a_feature_no_stay_can_have_is_a_422_naming_its_range(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """A temperature in °F, an FiO₂ as a fraction or a negative count was scored as if it
    were °C, % and a count, with no word; every stored value passed the plausible ranges
    of ingestion, so no stay has such a feature. Each is a 422 at its feature, naming the
    range and unit but not the value; a plausible vector is still scored."""
    predictor = get_state(app).predictor
    assert predictor is not None
    names = set(predictor.feature_names)
    bad = {"temp_last_all": 98.6, "fio2_max_24h": 0.4, "hr_count_6h": -1, "weight_kg": 180_000}
    assert set(bad) <= names
    headers = creds.api_key("integration")
    refused = client.post("/api/v1/predict", json=bad, headers=headers)
    assert refused.status_code == 422
    details = refused.get_json()["error"]["details"]
    assert sorted(d["loc"][1] for d in details) == sorted(bad)
    why = {d["loc"][1]: d["msg"] for d in details}
    assert why["temp_last_all"] == (
        "outside the plausible range of Temperature (25-45 °C); is it in another unit?"
    )
    assert "98.6" not in refused.get_data(as_text=True)
    good = {"temp_last_all": 37.0, "fio2_max_24h": 40, "hr_count_6h": 3, "weight_kg": 80}
    assert client.post("/api/v1/predict", json=good, headers=headers).status_code == 200
    batch = client.post("/api/v1/predict/batch", json={"rows": [good, bad]}, headers=headers)
    assert batch.status_code == 422
    assert {tuple(d["loc"][:3]) for d in batch.get_json()["error"]["details"]} == {
        ("body", "rows", 1)
    }


def test_predict_rejects_every_bad_field_at_once(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    response = client.post(
        "/api/v1/predict",
        json={"no_such_feature": 1, "hr_last_6h": "fast", "age": True},
        headers=creds.api_key("integration"),
    )
    assert response.status_code == 422
    locs = {tuple(d["loc"]) for d in response.get_json()["error"]["details"]}
    assert ("body", "no_such_feature") in locs
    assert len(locs) == 3


def test_predict_stored_patient_is_stored_and_audited(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    response = client.post(
        "/api/v1/predict", json={"patient_id": ward[0]}, headers=creds.api_key("clinician")
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["data_freshness_at"] is not None
    assert body["factors"], "a stored patient's prediction carries its top factors"
    with get_state(app).sessions() as session:
        stored = session.scalar(select(Prediction).where(Prediction.public_id == body["id"]))
        assert stored is not None
        admitted = session.scalar(
            select(Encounter.admitted_at).where(Encounter.id == stored.encounter_id)
        )
        assert admitted is not None
        assert body["early"] == early_in_stay(stored.task, admitted, stored.as_of)
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "prediction.served")
        ).all()
    assert any(a.patient_id == ward[0] for a in audit)
    unknown = client.post(
        "/api/v1/predict", json={"patient_id": "nope"}, headers=creds.api_key("clinician")
    )
    assert unknown.status_code == 404


def test_patient_detail_history_and_observations(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("clinician")
    detail = client.get(f"/api/v1/patients/{ward[0]}", headers=headers).get_json()
    assert detail["risk"]["probability"] > 0
    assert detail["encounter"]["unit"] in ("MICU", "SICU", "CCU", "CSRU")
    history = client.get(f"/api/v1/patients/{ward[0]}/predictions", headers=headers).get_json()
    assert len(history["items"]) >= 1
    obs = client.get(f"/api/v1/patients/{ward[0]}/observations?code=hr", headers=headers)
    items = obs.get_json()["items"]
    assert items
    assert {o["code"] for o in items} == {"8867-4"}
    bad = client.get(
        f"/api/v1/patients/{ward[0]}/observations?code=zzz&since=yesterday", headers=headers
    )
    assert bad.status_code == 422
    assert len(bad.get_json()["error"]["details"]) == 2
    # A limit keeps the newest observations (listed oldest first), not the stay's first.
    newest = client.get(
        f"/api/v1/patients/{ward[0]}/observations?code=hr&limit=2", headers=headers
    ).get_json()["items"]
    assert [o["effective_at"] for o in newest] == [o["effective_at"] for o in items[-2:]]
    # An empty code is not "no filter": the schema's enum has no "", so it is refused too.
    empty = client.get(f"/api/v1/patients/{ward[0]}/observations?code=", headers=headers)
    assert empty.status_code == 422


def test_no_champion_gives_503(client: FlaskClient, creds: Credentials) -> None:
    response = client.post("/api/v1/predict", json={"x": 1}, headers=creds.api_key("integration"))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "model_unavailable"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["model"] == "no champion model"


def test_predict_refuses_a_stay_that_has_ended(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """A discharged stay is not scored "now": its features would count the time since
    discharge as hours of the stay, and the stored risk would become its current one."""
    sessions = get_state(app).sessions
    with sessions.begin() as session:
        stay = session.scalars(
            select(Encounter)
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Patient.public_id == ward[0])
        ).one()
        stay.discharged_at = datetime.now(UTC) - timedelta(days=3)
        stay_id = stay.id
        before = len(
            session.scalars(select(Prediction.id).where(Prediction.encounter_id == stay_id)).all()
        )
    response = client.post(
        "/api/v1/predict", json={"patient_id": ward[0]}, headers=creds.api_key("clinician")
    )
    assert response.status_code == 422, response.get_json()
    (detail,) = response.get_json()["error"]["details"]
    assert detail["loc"] == ["body", "patient_id"]
    assert detail["msg"].startswith("the patient's latest stay has ended")
    assert ward[0] not in str(response.get_json())
    with sessions() as session:
        after = session.scalars(select(Prediction.id).where(Prediction.encounter_id == stay_id))
        assert len(after.all()) == before


def test_posted_batch_quarantines_a_bad_item_and_stores_the_rest(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """An ingest batch is not refused for one wrong item: that item is quarantined with its
    reason, the rest is stored, and the 201 report counts both (nothing lost)."""
    now = datetime.now(UTC).isoformat()
    good = {"code": "8867-4", "value": 88, "unit": "/min", "time": now, "patient": ward[0]}
    bad = {**good, "value": 0}  # implausible: a heart rate of 0 is a device artefact
    response = client.post(
        "/api/v1/observations", json=[good, bad], headers=creds.api_key("integration")
    )
    assert response.status_code == 201, response.get_json()
    report = response.get_json()["report"]
    assert report["stored"] == 1
    assert report["quarantined"] == 1
    assert report["balanced"] is True


def test_an_observation_naming_only_the_patient_joins_the_stay_it_was_taken_in(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """docs/api.md's example names the patient, not the stay: the reading belongs to the
    stay in progress, so the stay is rescored at once; one taken before the stay began
    stays with the patient only (it was stored, but never reached a risk, before)."""
    sessions = get_state(app).sessions
    with sessions() as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == ward[0])).one()
        stay = session.scalars(
            select(Encounter)
            .where(Encounter.patient_id == patient.id, Encounter.discharged_at.is_(None))
            .order_by(Encounter.admitted_at.desc())
        ).first()
        assert stay is not None
        stay_id, admitted = stay.id, stay.admitted_at
    now = datetime.now(UTC)
    during = {"code": "8867-4", "value": 117.25, "unit": "/min", "time": now.isoformat()}
    before = {**during, "value": 66.75, "time": (admitted - timedelta(days=3)).isoformat()}
    response = client.post(
        "/api/v1/observations",
        json=[{**during, "patient": ward[0]}, {**before, "patient": ward[0]}],
        headers=creds.api_key("integration"),
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["report"]["stored"] == 2
    assert len(response.get_json()["rescored"]) == 1
    with sessions() as session:
        stored = dict(
            session.execute(
                select(Observation.value, Observation.encounter_id).where(
                    Observation.patient_id == patient.id, Observation.value.in_([117.25, 66.75])
                )
            ).all()
        )
    assert stored == {117.25: stay_id, 66.75: None}
