"""FHIR ``date`` searches take every precision FHIR R4 allows, each as the range it covers.

``GET /fhir/Observation?date=ge2026-11-29`` was refused (422, "date-time needs a
timezone"), as was any value without a time zone; Encounter took no ``date`` at all. Per
http://hl7.org/fhir/R4/search.html#date a year, month, day or minute denotes its whole
range, each prefix is defined against that range, and a value without a time zone is in
the server's (UTC here). Real app, PostgreSQL; the rows sit just before, at and just after
midnight UTC so that an off-by-one at either end of the day shows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db import session_scope
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.serving.state import get_state


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Observation name -> effective time (UTC).
OBSERVATIONS = {
    "last-year": "2025-12-31T23:59:59",
    "day-before": "2026-11-28T23:59:59",  # one second before the day
    "midnight": "2026-11-29T00:00:00",  # the day's first instant
    "noon": "2026-11-29T12:00:00",
    "day-end": "2026-11-29T23:59:59.999999",  # its last
    "next-midnight": "2026-11-30T00:00:00",  # the next day's first
    "next-month": "2026-12-01T08:00:00",
}
# Encounter name -> (admitted, discharged or None while in progress).
ENCOUNTERS = {
    "ended-before": ("2026-11-20T00:00:00", "2026-11-28T23:59:59"),
    "over-midnight": ("2026-11-28T22:00:00", "2026-11-29T02:00:00"),
    "within-day": ("2026-11-29T08:00:00", "2026-11-29T20:00:00"),
    "open": ("2026-11-29T23:00:00", None),
}
# Risk name -> as of.
RISKS = {
    "day-before": "2026-11-28T23:59:59",
    "midnight": "2026-11-29T00:00:00",
    "next-midnight": "2026-11-30T00:00:00",
}


@pytest.fixture
def timeline(app: Flask) -> dict[str, Any]:
    """A patient with the observations, stays and champion risks above; returns the
    patient's public id and the database ids of each row by name."""
    with session_scope(get_state(app).sessions) as session:
        patient = Patient(source="test", source_ref="date-search")
        session.add(patient)
        session.flush()
        stays = {}
        for name, (admitted, discharged) in ENCOUNTERS.items():
            stay = Encounter(
                patient_id=patient.id,
                source="test",
                source_ref=name,
                unit="MICU",
                admitted_at=_at(admitted),
                discharged_at=_at(discharged) if discharged else None,
            )
            session.add(stay)
            stays[name] = stay
        observations = {}
        for name, when in OBSERVATIONS.items():
            row = Observation(
                patient_id=patient.id,
                code="8867-4",
                value=80.0,
                unit="/min",
                effective_at=_at(when),
                source="test",
                source_ref=name,
                dedup_key=uuid.uuid4(),
            )
            session.add(row)
            observations[name] = row
        session.flush()
        return {
            "patient": patient.public_id,
            "Observation": {str(o.id): n for n, o in observations.items()},
            "Encounter": {s.public_id: n for n, s in stays.items()},
            "_patient_id": patient.id,
            "_stay_id": stays["open"].id,
        }


def _search(
    client: FlaskClient, creds: Credentials, kind: str, patient: str, *dates: str, **more: str
) -> Any:
    query = [("patient", patient), *(("date", d) for d in dates), *more.items()]
    response = client.get(f"/fhir/{kind}", query_string=query, headers=creds.api_key("clinician"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _names(bundle: Any, names: dict[str, str]) -> set[str]:
    assert bundle["total"] == len(bundle.get("entry", []))
    return {names[e["resource"]["id"]] for e in bundle.get("entry", [])}


THE_DAY = {"midnight", "noon", "day-end"}
BEFORE = {"last-year", "day-before"}
AFTER = {"next-midnight", "next-month"}


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        # A day is 00:00 up to (not including) 00:00 the next day, UTC.
        (["2026-11-29"], THE_DAY),
        (["eq2026-11-29"], THE_DAY),
        (["ge2026-11-29"], THE_DAY | AFTER),
        (["gt2026-11-29"], AFTER),
        (["le2026-11-29"], BEFORE | THE_DAY),
        (["lt2026-11-29"], BEFORE),
        (["ge2026-11-29", "lt2026-11-30"], THE_DAY),
        # A month and a year.
        (["2026-11"], {"day-before"} | THE_DAY | {"next-midnight"}),
        (["gt2026-11"], {"next-month"}),
        (["lt2026-11"], {"last-year"}),
        (["2026"], {"day-before"} | THE_DAY | AFTER),
        (["le2025"], {"last-year"}),
        # A minute, in UTC without a time zone or in the zone given.
        (["2026-11-29T12:00"], {"noon"}),
        (["2026-11-29T13:00+01:00"], {"noon"}),
        (["2026-11-29T23:59Z"], {"day-end"}),
        (["le2026-11-29T23:59"], BEFORE | THE_DAY),
        (["gt2026-11-28T23:59"], THE_DAY | AFTER),
        (["ge2026-11-29T00:00+01:00"], {"day-before"} | THE_DAY | AFTER),
        # A second without a time zone is that instant in UTC.
        (["2026-11-29T12:00:00"], {"noon"}),
        # An instant with its zone, as before: eq equal, gt after, le at or before.
        (["2026-11-29T00:00:00Z"], {"midnight"}),
        (["gt2026-11-29T00:00:00Z"], {"noon", "day-end"} | AFTER),
        (["ge2026-11-29T00:00:00+00:00"], THE_DAY | AFTER),
        (["le2026-11-29T12:00:00Z"], BEFORE | {"midnight", "noon"}),
        (["lt2026-11-29T00:00:00.000001Z"], BEFORE | {"midnight"}),
    ],
)
def test_observation_date_precisions(
    client: FlaskClient,
    creds: Credentials,
    timeline: dict[str, Any],
    dates: list[str],
    expected: set[str],
) -> None:
    bundle = _search(client, creds, "Observation", timeline["patient"], *dates)
    assert _names(bundle, timeline["Observation"]) == expected


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        # The period lies within the day.
        (["2026-11-29"], {"within-day"}),
        # It reaches the day or later (a stay in progress has no end).
        (["ge2026-11-29"], {"over-midnight", "within-day", "open"}),
        # It goes on past the day's end.
        (["gt2026-11-29"], {"open"}),
        # It began by the day's end; before its start.
        (["le2026-11-29"], set(ENCOUNTERS)),
        (["lt2026-11-29"], {"ended-before", "over-midnight"}),
        (["2026-11"], {"ended-before", "over-midnight", "within-day"}),
        (["ge2026-11-29T02:00:00Z"], {"over-midnight", "within-day", "open"}),
        (["gt2026-11-29T02:00:00Z"], {"within-day", "open"}),
    ],
)
def test_encounter_date_searches_the_period(
    client: FlaskClient,
    creds: Credentials,
    timeline: dict[str, Any],
    dates: list[str],
    expected: set[str],
) -> None:
    bundle = _search(client, creds, "Encounter", timeline["patient"], *dates)
    assert _names(bundle, timeline["Encounter"]) == expected


def test_encounter_date_and_status_together(
    client: FlaskClient, creds: Credentials, timeline: dict[str, Any]
) -> None:
    bundle = _search(
        client, creds, "Encounter", timeline["patient"], "ge2026-11-29", status="finished"
    )
    assert _names(bundle, timeline["Encounter"]) == {"over-midnight", "within-day"}


@pytest.mark.usefixtures("champion")
def test_risk_assessment_date_is_a_day(
    app: Flask, client: FlaskClient, creds: Credentials, timeline: dict[str, Any]
) -> None:
    with session_scope(get_state(app).sessions) as session:
        version = session.scalar(select(ModelVersion.id).limit(1))
        assert version is not None
        for name, when in RISKS.items():
            session.add(
                Prediction(
                    public_id=f"risk-{name}",
                    patient_id=timeline["_patient_id"],
                    encounter_id=timeline["_stay_id"],
                    model_version_id=version,
                    task="icu-mortality",
                    score=0.2,
                    band="low",
                    as_of=_at(when),
                    features_digest="0" * 64,
                )
            )
    names = {f"risk-{n}": n for n in RISKS}
    patient = timeline["patient"]
    assert _names(_search(client, creds, "RiskAssessment", patient, "2026-11-29"), names) == {
        "midnight"
    }
    assert _names(_search(client, creds, "RiskAssessment", patient, "lt2026-11-29"), names) == {
        "day-before"
    }
    assert _names(_search(client, creds, "RiskAssessment", patient, "gt2026-11-29"), names) == {
        "next-midnight"
    }


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2026-02-30", "not a calendar date"),
        ("2026-13", "not a calendar date"),
        ("2026-00", "not a calendar date"),
        ("2026-11-29T25:00Z", "not a calendar date and time of day"),
        ("2026-11-29T10", "not a FHIR date"),  # an hour needs its minutes
        ("2026-11-29Z", "not a FHIR date"),  # a time zone needs a time
        ("29/11/2026", "not a FHIR date"),
        ("", "not a FHIR date"),
        ("2026-11-29T10:00:00 01:00", "%2B"),  # a + the URL decoded as a space
        ("2026-11-29T10:00+15:00", "not a time zone"),
        ("1700", "outside the accepted range"),
        ("ne2026-11-29", "prefix ne is not supported"),
        ("sa2026", "prefix sa is not supported"),
        ("ap2026-11-29", "prefix ap is not supported"),
    ],
)
@pytest.mark.parametrize("kind", ["Observation", "Encounter", "RiskAssessment"])
def test_a_date_that_cannot_be_searched_is_refused_saying_why(
    client: FlaskClient,
    creds: Credentials,
    timeline: dict[str, Any],
    kind: str,
    value: str,
    why: str,
) -> None:
    response = client.get(
        f"/fhir/{kind}",
        query_string={"patient": timeline["patient"], "date": value},
        headers=creds.api_key("clinician"),
    )
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/fhir+json"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["expression"] == ["date"]
    assert why in issue["diagnostics"]
    if len(value) > 4:
        assert value not in response.get_data(as_text=True)
