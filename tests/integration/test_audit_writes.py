"""Writes to a patient's record are in that patient's audit trail: an observation batch
(compact, device or FHIR Bundle) records one ``observation.created`` event per patient it
wrote to, so ``GET /api/v1/audit-events?patient_id=`` finds every one of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.state import get_state


def _trail(client: FlaskClient, headers: dict[str, str], patient_id: str) -> list[dict[str, Any]]:
    response = client.get(
        "/api/v1/audit-events",
        query_string={"patient_id": patient_id, "event": "observation.created"},
        headers=headers,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


def test_observation_writes_are_in_each_patients_audit_trail(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    writer, auditor = creds.api_key("integration"), creds.api_key("admin")
    bound = client.put(
        "/api/v1/devices/mon-7/binding", json={"patient_id": ward[2]}, headers=writer
    )
    assert bound.status_code == 200, bound.get_json()
    now = datetime.now(UTC).isoformat()  # after the binding: the device reads for ward[2]
    reading = {"code": "8867-4", "value": 88, "unit": "/min", "time": now}
    compact = [
        {**reading, "patient": ward[0]},
        {**reading, "patient": ward[0], "value": 90},
        {**reading, "patient": ward[1]},
        {**reading, "device": "mon-7"},
        {**reading, "patient": "no-such-patient"},
    ]
    response = client.post("/api/v1/observations", json=compact, headers=writer)
    assert response.status_code == 201, response.get_json()
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{ward[3]}"},
                    "effectiveDateTime": now,
                    "valueQuantity": {"value": 77, "unit": "/min"},
                }
            }
        ],
    }
    response = client.post("/api/v1/observations", json=bundle, headers=writer)
    assert response.status_code == 201, response.get_json()

    for patient_id in ward[:4]:
        events = _trail(client, auditor, patient_id)
        assert len(events) == 1, (ward.index(patient_id), events)
        assert events[0]["patient_id"] == patient_id
        assert events[0]["actor"].startswith("api_key:")
    assert _trail(client, auditor, ward[4]) == []
    assert _trail(client, auditor, "no-such-patient") == []
    # Not twice: the batches' own ingest.batch events name nobody, so each patient's whole
    # trail holds the one observation.created (besides the import that stored the ward).
    with get_state(client.application).sessions() as session:
        batches = session.scalars(
            select(AuditEvent.details).where(AuditEvent.event == "ingest.batch")
        )
        api = [d for d in batches if d["source"] == "api"]
    assert len(api) == 2
    assert all("patients" not in d for d in api)
    for patient_id in ward[:4]:
        whole = client.get(
            "/api/v1/audit-events", query_string={"patient_id": patient_id}, headers=auditor
        ).get_json()["items"]
        events = [e["event"] for e in whole]
        assert (events.count("observation.created"), events.count("ingest.batch")) == (1, 1)


def test_a_batch_for_no_known_patient_is_still_audited(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    now = datetime.now(UTC).isoformat()
    body = [{"code": "8867-4", "value": 88, "unit": "/min", "time": now, "patient": "nobody"}]
    response = client.post("/api/v1/observations", json=body, headers=creds.api_key("integration"))
    assert response.status_code == 201, response.get_json()
    events = client.get(
        "/api/v1/audit-events?event=observation.created", headers=creds.api_key("admin")
    ).get_json()["items"]
    assert [e["patient_id"] for e in events] == [None]
