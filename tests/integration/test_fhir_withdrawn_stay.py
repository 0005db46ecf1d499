"""A newer FHIR Encounter version saying entered-in-error or cancelled withdraws the stay.

Before, such a version was quarantined like a new Encounter with that status, and the
stay already stored stayed in progress: on the ward, rescored, shown to clinicians as a
stay the EHR says was an error. Through ``vitalcast ingest fhir`` on PostgreSQL with a
champion: the stay is withdrawn (kept with its data), leaves the ward and the scoring,
is reported and audited; an older version never withdraws, and nothing reopens it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.ingest_cli import count_rows, fhir_heart_rate, ingest_fhir_resources, only_stay
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import Settings
from vitalcast.modeling.tables import Prediction
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.rescoring import stays_with_unscored_data

START = datetime.now(UTC) - timedelta(hours=3)
PATIENT = {"resourceType": "Patient", "id": "wd-pat", "gender": "female"}


def _stay(version: str | None, status: str = "in-progress", sid: str = "wd-stay") -> dict[str, Any]:
    stay: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": sid,
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/wd-pat"},
        "period": {"start": START.isoformat()},
    }
    if version is not None:
        stay["meta"] = {"versionId": version}
    return stay


@pytest.mark.usefixtures("champion")
def test_newer_entered_in_error_withdraws_the_stored_stay(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    client: FlaskClient,
    creds: Credentials,
) -> None:
    first = ingest_fhir_resources(
        settings, tmp_path, "v1", PATIENT, _stay("1"), _heart_rate("o1", 30)
    )
    assert first["rescored"]["stays"] == 1
    reader = creds.api_key("clinician")
    assert client.get("/api/v1/patients", headers=reader).get_json()["total"] == 1

    report = ingest_fhir_resources(
        settings, tmp_path, "v2", _stay("2", "entered-in-error"), _heart_rate("o2", 60)
    )
    # Off the ward (before, the stay stayed there, in progress).
    assert client.get("/api/v1/patients", headers=reader).get_json()["total"] == 0
    assert report["withdrawn"] == [
        {
            "location": "v2.json#Bundle.entry[0].resource(Encounter/wd-stay)",
            "reason_code": "entered_in_error",
        }
    ]
    encounters = report["by_kind"]["encounter"]
    assert (encounters["stored"], encounters["quarantined"]) == (1, 0)
    assert report["quarantined"] == 0
    assert report["rescored"]["stays"] == 0  # its new reading is kept, not scored
    stay = only_stay(pg_engine)
    assert stay.withdrawn_at is not None
    assert stay.withdrawn_reason == "entered_in_error"
    assert stay.discharged_at is None  # no discharge is invented
    assert not stay.in_progress
    assert count_rows(pg_engine, Observation) == 2  # nothing deleted
    assert count_rows(pg_engine, Prediction) == 1  # the old risk stays in its history

    # Out of every scoring query; the patient page says why.
    with Session(pg_engine) as session:
        assert stays_with_unscored_data(session) == []
        public_id = session.scalars(select(Patient.public_id)).one()
    detail = client.get(f"/api/v1/patients/{public_id}", headers=reader).get_json()
    assert detail["risk"] is None
    assert "withdrawn" in detail["encounter"]["outside_population"]
    fhir = client.get(
        "/fhir/Encounter", query_string={"patient": public_id}, headers=reader
    ).get_json()
    assert [e["resource"]["status"] for e in fhir["entry"]] == ["entered-in-error"]

    # Audited, naming the patient.
    with Session(pg_engine) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "encounter.withdrawn")
        ).all()
    assert [(e.patient_id, e.resource, (e.details or {})["reason"]) for e in events] == [
        (public_id, f"Encounter/{stay.public_id}", "entered_in_error")
    ]

    # The old version again, or a newer one in progress: nothing reopens the stay.
    again = ingest_fhir_resources(settings, tmp_path, "v1-again", _stay("1"))
    assert again["by_kind"]["encounter"]["duplicates"] == 1
    later = ingest_fhir_resources(settings, tmp_path, "v3", _stay("3"), _heart_rate("o3", 90))
    assert later["withdrawn"] == []
    assert later["rescored"]["stays"] == 0
    assert only_stay(pg_engine).withdrawn_at == stay.withdrawn_at
    assert client.get("/api/v1/patients", headers=reader).get_json()["total"] == 0
    assert count_rows(pg_engine, Prediction) == 1


def test_older_or_unordered_withdrawal_withdraws_nothing(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    ingest_fhir_resources(settings, tmp_path, "v2", PATIENT, _stay("2"))

    late = ingest_fhir_resources(settings, tmp_path, "v1", _stay("1", "cancelled"))
    assert late["by_kind"]["encounter"]["duplicates"] == 1  # an old version, not news
    assert late["withdrawn"] == []
    assert only_stay(pg_engine).in_progress

    # Without meta it cannot be ordered after the stored version: quarantined, saying so.
    unversioned = ingest_fhir_resources(settings, tmp_path, "none", _stay(None, "entered-in-error"))
    assert unversioned["withdrawn"] == []
    [reject] = unversioned["rejects"]
    assert reject["reason_code"] == "entered_in_error"
    assert "kept in progress" in reject["reason"]
    assert only_stay(pg_engine).in_progress

    # A stay never stored is no stay to withdraw: quarantined as before.
    unknown = ingest_fhir_resources(
        settings, tmp_path, "other", _stay("5", "entered-in-error", "wd-other")
    )
    assert [r["reason_code"] for r in unknown["rejects"]] == ["entered_in_error"]
    assert unknown["withdrawn"] == []
    assert count_rows(pg_engine, Encounter) == 1


def test_a_withdrawn_discharged_stay_is_not_a_finished_encounter(
    settings: Settings, pg_engine: Engine, tmp_path: Path, client: FlaskClient, creds: Credentials
) -> None:
    """``/fhir/Encounter?status=finished`` listed a discharged stay the EHR later
    withdrew, rendered with status entered-in-error: a search answer contradicting its
    own filter. The search without a status still lists it, with its status."""
    finished = _stay("1", "finished") | {
        "period": {"start": START.isoformat(), "end": (START + timedelta(hours=2)).isoformat()}
    }
    ingest_fhir_resources(settings, tmp_path, "v1", PATIENT, finished)
    assert only_stay(pg_engine).discharged_at is not None
    ingest_fhir_resources(settings, tmp_path, "v2", _stay("2", "entered-in-error"))
    stay = only_stay(pg_engine)
    assert stay.withdrawn_at is not None
    assert stay.discharged_at is not None
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
    reader = creds.api_key("clinician")

    def statuses(**query: str) -> list[str]:
        answer = client.get(
            "/fhir/Encounter", query_string={"patient": public_id, **query}, headers=reader
        ).get_json()
        assert answer["total"] == len(answer.get("entry", []))
        return [e["resource"]["status"] for e in answer.get("entry", [])]

    assert statuses(status="finished") == []
    assert statuses(status="in-progress") == []
    assert statuses() == ["entered-in-error"]
    # A status list matches any of its codes, as FHIR token search reads a comma.
    assert statuses(status="entered-in-error") == ["entered-in-error"]
    assert statuses(status="finished,entered-in-error") == ["entered-in-error"]
    assert statuses(status="arrived,in-progress,onleave,triaged,cancelled") == []
    refused = client.get(
        "/fhir/Encounter", query_string={"patient": public_id, "status": "done"}, headers=reader
    )
    assert refused.status_code == 422
    assert refused.get_json()["issue"][0]["expression"] == ["status"]


@pytest.mark.usefixtures("champion")
@pytest.mark.parametrize(
    ("withdrawal", "status"), [("entered-in-error", "entered-in-error"), ("cancelled", "final")]
)
def test_a_withdrawn_stays_observations_and_risks_carry_its_withdrawal(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    client: FlaskClient,
    creds: Credentials,
    withdrawal: str,
    status: str,
) -> None:
    """``/fhir`` served the readings and risks of a stay its source said was entered in
    error as ``final``, with nothing linking a risk to its stay: an EHR took them for the
    patient's results. They now say ``entered-in-error``; a cancelled stay's readings
    were taken, so they stay ``final``. Every one names its encounter."""
    ingest_fhir_resources(settings, tmp_path, "v1", PATIENT, _stay("1"), _heart_rate("o1", 30))
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
        stay_id = session.scalars(select(Encounter.public_id)).one()
    reader = creds.api_key("clinician")

    def resources(kind: str) -> list[dict[str, Any]]:
        answer = client.get(f"/fhir/{kind}", query_string={"patient": public_id}, headers=reader)
        assert answer.status_code == 200, answer.get_json()
        return [e["resource"] for e in answer.get_json().get("entry", [])]

    def read(resource: dict[str, Any]) -> dict[str, Any]:
        path = f"/fhir/{resource['resourceType']}/{resource['id']}"
        answer = client.get(path, headers=reader)
        assert answer.status_code == 200, answer.get_json()
        return dict(answer.get_json())

    before = resources("Observation") + resources("RiskAssessment")
    assert [r["resourceType"] for r in before] == ["Observation", "RiskAssessment"]
    assert [r["status"] for r in before] == ["final", "final"]
    assert [r["encounter"]["reference"] for r in before] == [f"Encounter/{stay_id}"] * 2

    ingest_fhir_resources(settings, tmp_path, "v2", _stay("2", withdrawal))
    assert only_stay(pg_engine).withdrawn_at is not None
    after = resources("Observation") + resources("RiskAssessment")
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert [r["status"] for r in after] == [status, status]
    assert [read(r)["status"] for r in after] == [status, status]
    assert [r["encounter"]["reference"] for r in after] == [f"Encounter/{stay_id}"] * 2


def _heart_rate(oid: str, minutes: int) -> dict[str, Any]:
    return fhir_heart_rate(oid, "wd-pat", "wd-stay", START + timedelta(minutes=minutes))
