"""A withdrawn duplicate admission does not hide the stay in progress.

A patient on the ward (scored, in progress) gets a second, newer admission that the EHR
then says was entered in error. The patient page, the patient API and feedback used the
newest encounter, withdrawn or not: the page said "Not scored. This stay was withdrawn"
for a patient the ward lists with a risk, and the stay's risk could not be seen or
answered there. Through ``vitalcast ingest fhir`` on PostgreSQL with a champion.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.ingest_cli import fhir_heart_rate, ingest_fhir_resources
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import Settings

NOW = datetime.now(UTC)
PATIENT = {"resourceType": "Patient", "id": "dup-pat", "gender": "male"}


def _stay(sid: str, start: datetime, version: str, status: str = "in-progress") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": sid,
        "meta": {"versionId": version},
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/dup-pat"},
        "period": {"start": start.isoformat()},
    }


@pytest.mark.usefixtures("champion")
def test_the_stay_in_progress_outranks_a_newer_withdrawn_duplicate(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    client: FlaskClient,
    creds: Credentials,
) -> None:
    real = _stay("dup-real", NOW - timedelta(hours=5), "1")
    first = ingest_fhir_resources(
        settings,
        tmp_path,
        "real",
        PATIENT,
        real,
        fhir_heart_rate("dup-o1", "dup-pat", "dup-real", NOW - timedelta(minutes=20)),
    )
    assert first["rescored"]["stays"] == 1
    ingest_fhir_resources(
        settings, tmp_path, "dup", _stay("dup-wrong", NOW - timedelta(minutes=30), "1")
    )
    withdrawn = ingest_fhir_resources(
        settings,
        tmp_path,
        "dup-err",
        _stay("dup-wrong", NOW - timedelta(minutes=30), "2", "entered-in-error"),
    )
    assert len(withdrawn["withdrawn"]) == 1
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
        stay_id = session.scalars(
            select(Encounter.public_id).where(Encounter.source_ref.like("%dup-real%"))
        ).one()

    reader = creds.api_key("clinician")
    [row] = client.get("/api/v1/patients", headers=reader).get_json()["items"]
    assert row["risk"] is not None
    detail = client.get(f"/api/v1/patients/{public_id}", headers=reader).get_json()
    assert detail["encounter"]["id"] == stay_id
    assert detail["risk"]["probability"] == row["risk"]["probability"]

    creds.login(client, creds.user("carla", "clinician"))
    page = client.get(f"/patients/{public_id}").get_data(as_text=True)
    assert "withdrawn" not in page
    assert re.search(r'<p class="bigpct">\d+(\.\d)? %</p>', page), page
    assert "Does this risk match your assessment?" in page
