"""A newer FHIR Encounter version saying the stay is going on reopens a discharged stay.

FHIR has no ADT^A13: an EHR that corrects a discharge recorded in error sends the
Encounter again, newer, ``in-progress`` and without ``period.end``. Before, that update
kept the stored discharge (an update keeps what a version leaves out), so the patient
stayed off the ward and unscored while the EHR said they were still in it. Through
``vitalcast ingest fhir`` on PostgreSQL with a champion.
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
from tests.ingest_cli import fhir_heart_rate, ingest_fhir_resources, only_stay
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.security.tables import AuditEvent

START = datetime.now(UTC) - timedelta(hours=5)
PATIENT = {"resourceType": "Patient", "id": "ro-pat", "gender": "male"}


def _stay(version: str, status: str, end: datetime | None = None) -> dict[str, Any]:
    period = {"start": START.isoformat()}
    if end is not None:
        period["end"] = end.isoformat()
    return {
        "resourceType": "Encounter",
        "id": "ro-stay",
        "meta": {"versionId": version},
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/ro-pat"},
        "period": period,
    }


def _on_ward(client: FlaskClient, headers: dict[str, str]) -> int:
    return int(client.get("/api/v1/patients", headers=headers).get_json()["total"])


@pytest.mark.usefixtures("champion")
def test_newer_in_progress_version_reopens_a_discharged_stay(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    client: FlaskClient,
    creds: Credentials,
) -> None:
    reader = creds.api_key("clinician")
    ingest_fhir_resources(
        settings, tmp_path, "v1", PATIENT, _stay("1", "in-progress"), _heart_rate("o1", 30)
    )
    discharged = ingest_fhir_resources(
        settings, tmp_path, "v2", _stay("2", "finished", START + timedelta(hours=2))
    )
    assert discharged["discharge_cancelled"] == []
    assert only_stay(pg_engine).discharged_at is not None
    assert _on_ward(client, reader) == 0

    # The EHR corrects the discharge: a newer version, in progress, without an end.
    report = ingest_fhir_resources(
        settings, tmp_path, "v3", _stay("3", "in-progress"), _heart_rate("o2", 240)
    )
    assert report["discharge_cancelled"] == [
        {"location": "v3.json#Bundle.entry[0].resource(Encounter/ro-stay)"}
    ]
    assert report["quarantined"] == 0
    assert report["rescored"]["stays"] == 1  # scored again, now
    stay = only_stay(pg_engine)
    assert stay.discharged_at is None
    assert stay.in_progress
    assert _on_ward(client, reader) == 1
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "encounter.discharge_cancelled")
        ).all()
    assert [(e.patient_id, e.resource) for e in events] == [
        (public_id, f"Encounter/{stay.public_id}")
    ]

    # The older, finished version again discharges nothing: it is not news.
    again = ingest_fhir_resources(
        settings, tmp_path, "v2-again", _stay("2", "finished", START + timedelta(hours=2))
    )
    assert again["by_kind"]["encounter"]["duplicates"] == 1
    assert only_stay(pg_engine).in_progress
    # A newer finished version discharges it as any discharge does.
    ingest_fhir_resources(
        settings, tmp_path, "v4", _stay("4", "finished", START + timedelta(hours=4.5))
    )
    assert only_stay(pg_engine).discharged_at is not None
    assert _on_ward(client, reader) == 0


def test_only_the_version_kept_and_a_stated_stay_reopen(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    end = START + timedelta(hours=2)
    ingest_fhir_resources(settings, tmp_path, "v1", PATIENT, _stay("1", "finished", end))

    # In one batch, an in-progress version superseded by a newer finished one.
    batch = ingest_fhir_resources(
        settings, tmp_path, "v2-v3", _stay("2", "in-progress"), _stay("3", "finished", end)
    )
    assert batch["discharge_cancelled"] == []
    assert only_stay(pg_engine).discharged_at is not None

    # "unknown" says nothing about the stay going on: the discharge stands.
    unknown = ingest_fhir_resources(settings, tmp_path, "v4", _stay("4", "unknown"))
    assert unknown["discharge_cancelled"] == []
    assert only_stay(pg_engine).discharged_at is not None

    # In progress without meta: it cannot be ordered after the discharge. It was counted
    # as a duplicate; it is quarantined with the reason, as an A13 without MSH-7 is.
    unversioned = _stay("5", "in-progress")
    del unversioned["meta"]
    refused = ingest_fhir_resources(settings, tmp_path, "v5", unversioned)
    assert refused["quarantined"] == 1
    assert refused["discharge_cancelled"] == []
    assert only_stay(pg_engine).discharged_at is not None


def _heart_rate(oid: str, minutes: int) -> dict[str, Any]:
    return fhir_heart_rate(oid, "ro-pat", "ro-stay", START + timedelta(minutes=minutes))
