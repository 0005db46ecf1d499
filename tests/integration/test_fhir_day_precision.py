"""A FHIR onset or study start given as a date alone is kept as a day, never dropped.

``"onsetDateTime": "2019-03-04"`` is valid FHIR (day precision). It was stored as a
Condition with no onset and no trace of the date; an ImagingStudy's ``started`` alike.
Through ``vitalcast ingest fhir`` into PostgreSQL: the day is stored (``onset_on``,
``started_on``) and shown by the patient API, and what cannot be kept honestly (a year or
month alone, a time without a timezone, a day still ahead, a day before birth) is
quarantined with a reason that names the field, never the date.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from vitalcast.cli import main
from vitalcast.clinical.tables import Condition, ImagingStudy, Patient

PATIENT = {"resourceType": "Patient", "id": "dp-pat", "birthDate": "1950-01-03"}
STAY = {
    "resourceType": "Encounter",
    "id": "dp-stay",
    "status": "in-progress",
    "class": {"code": "IMP"},
    "subject": {"reference": "Patient/dp-pat"},
    "period": {"start": "2026-11-20T10:00:00Z"},
}


def _condition(code: str, **onset: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"dp-cond-{code}",
        "subject": {"reference": "Patient/dp-pat"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        **onset,
    }


def _study(uid: str, started: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"dp-study-{uid}",
        "status": "available",
        "subject": {"reference": "Patient/dp-pat"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.3.{uid}"}],
        "started": started,
    }


# code -> (onset, reason code it is quarantined with, or None when stored)
CONDITIONS = {
    "1001": ({"onsetDateTime": "2019-03-04"}, None),
    "1002": ({"onsetPeriod": {"start": "2018-07-09"}}, None),
    "1003": ({"onsetDateTime": "2019-03-04T10:00:00+02:00"}, None),
    "1004": ({"onsetDateTime": "2019-03"}, "imprecise_time"),
    "1005": ({"onsetDateTime": "2019"}, "imprecise_time"),
    "1006": ({"onsetDateTime": "2019-03-04T10:00:00"}, "invalid_resource"),  # fhir.resources
    "1007": ({"onsetDateTime": "2150-01-01"}, "future_time"),
    "1008": ({"onsetDateTime": "1949-12-31"}, "before_birth"),
}


def _bundle(tmp_path: Path) -> Path:
    resources = [
        PATIENT,
        STAY,
        *(_condition(code, **onset) for code, (onset, _) in CONDITIONS.items()),
        _study("1", "2020-05-06"),
        _study("2", "2020-05-06T08:30:00Z"),
    ]
    path = tmp_path / "bundle.json"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    path.write_text(json.dumps(bundle))
    return path


def _ingest(pg_url: str, tmp_path: Path, path: Path) -> Result:
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}
    return CliRunner().invoke(main, ["ingest", "fhir", str(path), "--json"], env=env)


def test_date_only_onset_and_start_are_kept_or_quarantined(
    pg_url: str, pg_engine: Engine, tmp_path: Path
) -> None:
    result = _ingest(pg_url, tmp_path, _bundle(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is True
    conditions = report["by_kind"]["condition"]
    assert (conditions["received"], conditions["stored"], conditions["quarantined"]) == (8, 3, 5)
    rejects = {r["location"].rsplit("(", 1)[-1]: r for r in report["rejects"]}
    for code, (_, reason) in CONDITIONS.items():
        reject = rejects.get(f"Condition/dp-cond-{code})")
        assert (reject["reason_code"] if reject else None) == reason, code
    for reject in report["rejects"]:
        # The reason names the field, never the date (a date of care is an identifier).
        assert "onset" in reject["reason"], reject
        for text in ("2019", "2150", "1949", "03-04"):
            assert text not in reject["reason"], reject
    assert report["by_kind"]["imaging_study"]["stored"] == 2

    with Session(pg_engine) as session:
        stored = {c.code: (c.onset_at, c.onset_on) for c in session.scalars(select(Condition))}
        studies = {
            s.study_uid: (s.started_at, s.started_on) for s in session.scalars(select(ImagingStudy))
        }
    assert stored["1001"] == (None, date(2019, 3, 4))
    assert stored["1002"] == (None, date(2018, 7, 9))
    assert stored["1003"] == (datetime(2019, 3, 4, 8, 0, tzinfo=UTC), None)
    assert studies == {
        "1.2.3.1": (None, date(2020, 5, 6)),
        "1.2.3.2": (datetime(2020, 5, 6, 8, 30, tzinfo=UTC), None),
    }


def test_patient_api_shows_the_day(
    pg_url: str, tmp_path: Path, client: FlaskClient, creds: Credentials, pg_engine: Engine
) -> None:
    """The day reaches the clinician: the detail route gives it next to the exact times,
    and the patient page shows it as a date (not converted to a local time of day), in
    the order the onsets became known (a day counts once it is over everywhere)."""
    result = _ingest(pg_url, tmp_path, _bundle(tmp_path))
    assert result.exit_code == 0, result.output
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
    response = client.get(f"/api/v1/patients/{public_id}", headers=creds.api_key("clinician"))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    onsets = {c["code"]: (c["onset_at"], c["onset_date"]) for c in body["conditions"]}
    assert onsets == {
        "1001": (None, "2019-03-04"),
        "1002": (None, "2018-07-09"),
        "1003": ("2019-03-04T08:00:00+00:00", None),
    }
    starts = {s["study_uid"]: s["started_date"] for s in body["imaging_studies"]}
    assert starts == {"1.2.3.1": "2020-05-06", "1.2.3.2": None}

    creds.login(client, creds.user("carl", "clinician"))
    page = client.get(f"/patients/{public_id}").get_data(as_text=True)
    day = '<time datetime="2019-03-04">2019-03-04</time>'
    assert day in page
    assert '<time datetime="2020-05-06">2020-05-06</time>' in page
    # 1002 (9 July 2018) first; then 1003 (08:00 UTC on 4 March 2019) before 1001 (the
    # day of 4 March 2019, known only once it is over).
    rows = [page.index(f"<td>{code}</td>") for code in ("1002", "1003", "1001")]
    assert rows == sorted(rows)
