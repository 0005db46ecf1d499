"""Users bound to units see and act on their units' patients only, on every route.

A user created with ``--unit MICU`` signs in through the real form; each route that
lists, scores, binds or writes to patients is called with that session on the real app
and PostgreSQL, and a patient of another unit must answer exactly as an unknown one.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from tests.conftest import Credentials
from tests.integration.test_fhir_search import _count
from vitalcast.clinical.tables import DeviceBinding, Encounter, Observation, Patient
from vitalcast.modeling.tables import Prediction
from vitalcast.security.tables import ApiKey, AuditEvent, User
from vitalcast.serving.state import get_state

UNIT = "MICU"


@pytest.fixture
def units(app: Flask, ward: list[str]) -> dict[str, str]:
    """Each stored patient's public id → the unit of their stay in progress."""
    with get_state(app).sessions() as session:
        rows = session.execute(
            select(Patient.public_id, Encounter.unit)
            .join(Encounter, Encounter.patient_id == Patient.id)
            .where(Encounter.discharged_at.is_(None))
        ).all()
    by_patient = {p: str(u) for p, u in rows}
    counts = Counter(by_patient.values())
    assert counts[UNIT], f"the ward needs a {UNIT} stay: {counts}"
    assert len(counts) > 1, f"the ward needs stays of other units: {counts}"
    return by_patient


def _one_in(units: dict[str, str], inside: bool) -> str:
    return next(p for p, u in units.items() if (u == UNIT) == inside)


def _signed_in(client: FlaskClient, creds: Credentials, role: str = "clinician") -> str:
    """Sign a MICU-bound user in; returns the CSRF token for unsafe requests."""
    return creds.login(client, creds.user(f"micu.{role}", role, units=[UNIT]))


def test_patient_list_shows_only_the_callers_units(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    _signed_in(client, creds)
    mine = sorted(p for p, u in units.items() if u == UNIT)
    listed = client.get("/api/v1/patients?limit=500").get_json()
    assert listed["total"] == len(mine) < len(units)
    assert sorted(item["id"] for item in listed["items"]) == mine
    assert {item["unit"] for item in listed["items"]} == {UNIT}
    other = next(u for u in units.values() if u != UNIT)
    narrowed = client.get(f"/api/v1/patients?unit={other}").get_json()
    assert (narrowed["total"], narrowed["items"]) == (0, [])
    # Paging cannot reach past the caller's units either.
    assert client.get(f"/api/v1/patients?offset={len(mine)}").get_json()["items"] == []
    with get_state(app).sessions() as session:
        audited = session.scalars(
            select(AuditEvent.details).where(AuditEvent.event == "patient.list")
        ).all()
    assert sorted(audited[0]["patients"]) == mine
    # The web ward offers only the caller's units to choose from.
    ward_page = client.get("/ward").get_data(as_text=True)
    assert f'value="{other}"' not in ward_page
    # An unrestricted user still sees every unit.
    everyone = client.get("/api/v1/patients?limit=500", headers=creds.api_key("clinician"))
    assert everyone.get_json()["total"] == len(units)


def test_predict_refuses_a_patient_outside_the_callers_units(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    token = _signed_in(client, creds)
    headers = {"X-CSRF-Token": token}
    outside, inside = _one_in(units, False), _one_in(units, True)

    def predictions_of(public_id: str) -> int:
        return _count(app, Prediction, public_id)

    before = predictions_of(outside)
    refused = client.post("/api/v1/predict", json={"patient_id": outside}, headers=headers)
    detail = client.get(f"/api/v1/patients/{outside}")
    unknown = client.post("/api/v1/predict", json={"patient_id": "0" * 32}, headers=headers)
    assert refused.status_code == detail.status_code == unknown.status_code == 404
    assert (
        refused.get_json()["error"]["message"]
        == detail.get_json()["error"]["message"]
        == unknown.get_json()["error"]["message"]
        == "no patient with that id"
    )
    assert predictions_of(outside) == before  # nothing scored or stored
    with get_state(app).sessions() as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.event == "access.denied", AuditEvent.patient_id == outside
            )
        ).all()
    assert {d.resource for d in denied} == {"/api/v1/predict", f"/api/v1/patients/{outside}"}
    assert {d.actor for d in denied} == {"user:micu.clinician"}
    allowed = client.post("/api/v1/predict", json={"patient_id": inside}, headers=headers)
    assert allowed.status_code == 200, allowed.get_json()
    assert predictions_of(inside) >= 1


def test_device_binding_stays_within_the_callers_units(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    token = _signed_in(client, creds, role="nurse")
    headers = {"X-CSRF-Token": token}
    outside, inside = _one_in(units, False), _one_in(units, True)
    refused = client.put(
        "/api/v1/devices/bed-7/binding", json={"patient_id": outside}, headers=headers
    )
    assert refused.status_code == 404
    assert refused.get_json()["error"]["message"] == "no patient with that id"
    assert outside not in refused.get_data(as_text=True)
    with get_state(app).sessions() as session:
        assert session.scalar(select(func.count()).select_from(DeviceBinding)) == 0
    bound = client.put(
        "/api/v1/devices/bed-7/binding", json={"patient_id": inside}, headers=headers
    )
    assert bound.status_code == 200, bound.get_json()
    # A device an unrestricted admin bound to another unit's patient cannot be unbound
    # from here, nor bound to one of ours: both say it is in use outside our units, and
    # neither says by whom.
    admin = creds.api_key("admin")
    other_bed = client.put(
        "/api/v1/devices/bed-9/binding", json={"patient_id": outside}, headers=admin
    )
    assert other_bed.status_code == 200
    unbind = client.delete("/api/v1/devices/bed-9/binding", headers=headers)
    rebind = client.put(
        "/api/v1/devices/bed-9/binding", json={"patient_id": inside}, headers=headers
    )
    assert unbind.status_code == rebind.status_code == 409
    assert (
        unbind.get_json()["error"]["message"]
        == rebind.get_json()["error"]["message"]
        == "device is bound to a patient outside your units; it can be unbound only from there"
    )
    assert outside not in unbind.get_data(as_text=True) + rebind.get_data(as_text=True)
    never_bound = client.delete("/api/v1/devices/bed-404/binding", headers=headers)
    assert never_bound.status_code == 404
    # Another unit's stay answers as an unknown stay, not as another patient's.
    their_stay, _ = _records_of(app, outside)
    foreign = client.put(
        "/api/v1/devices/bed-8/binding",
        json={"patient_id": inside, "encounter_id": their_stay},
        headers=headers,
    )
    unknown = client.put(
        "/api/v1/devices/bed-8/binding",
        json={"patient_id": inside, "encounter_id": "0" * 32},
        headers=headers,
    )
    _same_answer(foreign, unknown)
    assert client.delete("/api/v1/devices/bed-7/binding", headers=headers).status_code == 200
    with get_state(app).sessions() as session:
        active = session.scalars(
            select(DeviceBinding.device_id).where(DeviceBinding.unbound_at.is_(None))
        ).all()
        unbound = session.scalar(select(AuditEvent).where(AuditEvent.event == "device.unbound"))
        denied = session.scalars(
            select(AuditEvent.resource).where(
                AuditEvent.event == "access.denied", AuditEvent.patient_id == outside
            )
        ).all()
    assert active == ["bed-9"]
    assert unbound is not None
    assert unbound.patient_id == inside
    assert sorted(denied) == [
        "/api/v1/devices/bed-7/binding",
        "/api/v1/devices/bed-8/binding",
        "/api/v1/devices/bed-9/binding",
        "/api/v1/devices/bed-9/binding",
    ]


def test_observations_for_another_units_patient_are_refused_whole(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    token = _signed_in(client, creds, role="integration")
    headers = {"X-CSRF-Token": token}
    outside, inside = _one_in(units, False), _one_in(units, True)
    now = datetime.now(UTC).isoformat()

    def reading(patient: str) -> dict[str, object]:
        return {"code": "8867-4", "value": 97, "unit": "/min", "time": now, "patient": patient}

    def stored() -> int:
        with get_state(app).sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Observation)) or 0)

    before = stored()
    mixed = client.post(
        "/api/v1/observations", json=[reading(inside), reading(outside)], headers=headers
    )
    unknown = client.post("/api/v1/observations", json=[reading("f" * 32)], headers=headers)
    assert mixed.status_code == unknown.status_code == 404
    assert mixed.get_json()["error"]["message"] == unknown.get_json()["error"]["message"]
    assert stored() == before
    ok = client.post("/api/v1/observations", json=[reading(inside)], headers=headers)
    assert ok.status_code == 201, ok.get_json()
    assert ok.get_json()["report"]["stored"] == 1


def _same_answer(first: TestResponse, second: TestResponse) -> None:
    """Both answers are the same bytes once each one's own request id is taken out."""
    assert first.status_code == second.status_code == 404

    def body(response: TestResponse) -> bytes:
        rid = response.headers["X-Request-ID"]  # in the body too, but for FHIR's
        return response.get_data().replace(rid.encode(), b"<rid>")

    assert body(first) == body(second)


def _records_of(app: Flask, public_id: str) -> tuple[str, str]:
    """The public ids of an encounter and a champion prediction of patient ``public_id``."""
    with get_state(app).sessions() as session:
        patient_id = session.scalar(select(Patient.id).where(Patient.public_id == public_id))
        encounter = session.scalar(
            select(Encounter.public_id).where(Encounter.patient_id == patient_id)
        )
        prediction = session.scalar(
            select(Prediction.public_id).where(
                Prediction.patient_id == patient_id, Prediction.role == "champion"
            )
        )
    assert encounter is not None
    assert prediction is not None
    return encounter, prediction


def test_fhir_reads_of_another_units_records_answer_as_unknown_ones(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    _signed_in(client, creds, role="nurse")
    outside, inside = _one_in(units, False), _one_in(units, True)
    encounter, prediction = _records_of(app, outside)
    for kind, hidden_id in (("Encounter", encounter), ("RiskAssessment", prediction)):
        hidden = client.get(f"/fhir/{kind}/{hidden_id}")
        unknown = client.get(f"/fhir/{kind}/{'0' * 32}")
        _same_answer(hidden, unknown)
        assert hidden.get_json()["issue"][0]["diagnostics"] == f"no {kind} with that id"
    with get_state(app).sessions() as session:
        denied = session.scalars(
            select(AuditEvent.resource).where(
                AuditEvent.event == "access.denied", AuditEvent.patient_id == outside
            )
        ).all()
    assert sorted(denied) == [f"/fhir/Encounter/{encounter}", f"/fhir/RiskAssessment/{prediction}"]
    mine, _ = _records_of(app, inside)
    assert client.get(f"/fhir/Encounter/{mine}").status_code == 200


def test_ward_row_of_another_units_patient_is_a_denial_answered_as_unknown(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    _signed_in(client, creds, role="nurse")
    outside, inside = _one_in(units, False), _one_in(units, True)
    with get_state(app).sessions() as session:
        before = session.scalar(select(func.max(AuditEvent.id)))
    hidden = client.get(f"/ward/rows/{outside}")
    unknown = client.get(f"/ward/rows/{'0' * 32}")

    def body(response: TestResponse) -> bytes:
        rid = response.headers["X-Request-ID"]
        return response.get_data().replace(rid.encode(), b"<rid>")

    assert hidden.status_code == unknown.status_code == 404
    assert body(hidden) == body(unknown)
    assert outside.encode() not in hidden.get_data()
    with get_state(app).sessions() as session:
        events = session.execute(
            select(AuditEvent.event, AuditEvent.outcome, AuditEvent.patient_id, AuditEvent.actor)
            .where(AuditEvent.id > before)
            .order_by(AuditEvent.id)
        ).all()
    assert [tuple(e) for e in events] == [("access.denied", "denied", outside, "user:micu.nurse")]
    assert client.get(f"/ward/rows/{inside}").status_code == 200


def test_an_admin_bound_to_units_can_neither_read_the_audit_log_nor_manage_accounts(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    """A MICU-bound admin used to read another unit's patient's whole audit trail
    (``?patient_id=``, which also told whether the id exists), and could create an API
    key or a user bound to no unit, either of which sees every unit."""
    other = _one_in(units, inside=False)
    token = _signed_in(client, creds, role="admin")
    json = {"Accept": "application/json"}
    refused = [
        client.get(f"/api/v1/audit-events?patient_id={other}", headers=json),
        client.get("/api/v1/audit-events", headers=json),
        client.get(f"/admin/audit?patient_id={other}"),
        client.get("/api/v1/users", headers=json),
        client.get("/admin/users"),
        client.post("/admin/api-keys", data={"csrf_token": token, "name": "x", "role": "admin"}),
        client.post(
            "/admin/users",
            data={
                "csrf_token": token,
                "username": "escape",
                "password": "long enough password",
                "role": "admin",
            },
        ),
    ]
    for response in refused:
        assert response.status_code == 403, response.request.path
        assert other not in response.get_data(as_text=True)
    assert "spans every unit" in refused[0].get_json()["error"]["message"]
    with get_state(app).sessions() as session:
        denials = session.scalars(
            select(AuditEvent).where(
                AuditEvent.event == "access.denied", AuditEvent.actor == "user:micu.admin"
            )
        ).all()
        assert len(denials) == len(refused)
        assert all(d.details and d.details["reason"] == "bound to units" for d in denials)
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0
        assert session.scalar(select(User.id).where(User.username == "escape")) is None
    # An admin bound to no unit still has both.
    client.post("/logout", data={"csrf_token": token})
    creds.login(client, creds.user("all.units.admin", "admin"))
    assert client.get(f"/api/v1/audit-events?patient_id={other}", headers=json).status_code == 200
    assert client.get("/admin/users").status_code == 200


def test_a_reading_naming_another_units_stay_is_not_stored_there(
    app: Flask, client: FlaskClient, creds: Credentials, units: dict[str, str]
) -> None:
    """A reading's stay decided whose it was: one naming the caller's own patient and
    another unit's stay passed the unit check (the patient was the caller's) and was
    stored under that other patient, who was rescored, while the audit event named the
    caller's patient. Such a reading is quarantined with its reason, as an unbound
    device's is."""
    token = _signed_in(client, creds, role="integration")
    outside, inside = _one_in(units, False), _one_in(units, True)
    with get_state(app).sessions() as session:
        stay = session.scalar(
            select(Encounter.public_id)
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Patient.public_id == outside, Encounter.discharged_at.is_(None))
        )
    before = _count(app, Observation, outside)
    reading = {
        "code": "8867-4",
        "value": 97,
        "unit": "/min",
        "time": datetime.now(UTC).isoformat(),
        "patient": inside,
        "encounter": stay,
    }
    response = client.post("/api/v1/observations", json=[reading], headers={"X-CSRF-Token": token})
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert [r["reason_code"] for r in answer["report"]["rejects"]] == [
        "encounter_of_another_patient"
    ]
    assert answer["rescored"] == []  # the other unit's stay was not rescored either
    assert stay not in str(answer)
    assert _count(app, Observation, outside) == before
