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


def _add_timeline(
    app: Flask,
    source_ref: str,
    observations: dict[str, str],
    encounters: dict[str, tuple[str, str | None]],
    risk_stay: str,
) -> dict[str, Any]:
    """A patient with these observations (name -> effective time) and stays (name ->
    admitted, discharged); returns the patient's public id, each row's name by its
    resource id, and the ids ``_add_risks`` needs (risks go on ``risk_stay``)."""
    with session_scope(get_state(app).sessions) as session:
        patient = Patient(source="test", source_ref=source_ref)
        session.add(patient)
        session.flush()
        stays = {
            name: Encounter(
                patient_id=patient.id,
                source="test",
                source_ref=name,
                unit="MICU",
                admitted_at=_at(admitted),
                discharged_at=_at(discharged) if discharged else None,
            )
            for name, (admitted, discharged) in encounters.items()
        }
        rows = {
            name: Observation(
                patient_id=patient.id,
                code="8867-4",
                value=80.0,
                unit="/min",
                effective_at=_at(when),
                source="test",
                source_ref=name,
                dedup_key=uuid.uuid4(),
            )
            for name, when in observations.items()
        }
        session.add_all([*stays.values(), *rows.values()])
        session.flush()
        return {
            "patient": patient.public_id,
            "Observation": {str(o.id): n for n, o in rows.items()},
            "Encounter": {s.public_id: n for n, s in stays.items()},
            "_patient_id": patient.id,
            "_stay_id": stays[risk_stay].id,
        }


def _add_risks(app: Flask, timeline: dict[str, Any], risks: dict[str, str]) -> dict[str, str]:
    """Champion risks (name -> as of) for the timeline's patient; each name by its id."""
    with session_scope(get_state(app).sessions) as session:
        version = session.scalar(select(ModelVersion.id).limit(1))
        assert version is not None
        for name, when in risks.items():
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
    return {f"risk-{n}": n for n in risks}


@pytest.fixture
def timeline(app: Flask) -> dict[str, Any]:
    """A patient with the observations and stays above (see ``_add_timeline``)."""
    return _add_timeline(app, "date-search", OBSERVATIONS, ENCOUNTERS, "open")


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
        # A second without a time zone is that second in UTC.
        (["2026-11-29T12:00:00"], {"noon"}),
        # A second (or a microsecond) with its zone: gt from its end, le before its end.
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
    names = _add_risks(app, timeline, RISKS)
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


# A value to the second, or a fraction of one, is the range that precision covers, as a
# minute is (http://hl7.org/fhir/R4/search.html#prefix: "the limits implied by the
# precision of the value"). It was read as an instant, so 10:15:30 missed a time of
# 10:15:30.4. The rows sit at the second's edges, to the microsecond the store keeps.
SECOND = "2026-11-29T10:15:30"
# Observation (and risk) name -> effective time (UTC).
IN_SECOND = {
    "second-before": "2026-11-29T10:15:29.999999",
    "second-start": "2026-11-29T10:15:30",
    "tenth-start": "2026-11-29T10:15:30.400",
    "tenth-end": "2026-11-29T10:15:30.499999",
    "second-end": "2026-11-29T10:15:30.999999",
    "next-second": "2026-11-29T10:15:31",
}
THE_SECOND = {"second-start", "tenth-start", "tenth-end", "second-end"}
THE_TENTH = {"tenth-start", "tenth-end"}  # 10:15:30.4, i.e. [.4, .5)
# Encounter name -> (admitted, discharged or None).
SECOND_STAYS = {
    "ends-in-second": ("2026-11-29T10:00:00", "2026-11-29T10:15:30.400"),
    "within-second": ("2026-11-29T10:15:30.200", "2026-11-29T10:15:30.700"),
    "starts-in-second": ("2026-11-29T10:15:30.400", None),
    "ends-at-next-second": ("2026-11-29T10:15:30.500", "2026-11-29T10:15:31"),
}


@pytest.fixture
def seconds(app: Flask) -> dict[str, Any]:
    """A patient with the observations and stays above, read back to show that the store
    kept each microsecond the boundaries rest on."""
    made = _add_timeline(app, "second-search", IN_SECOND, SECOND_STAYS, "starts-in-second")
    with session_scope(get_state(app).sessions) as session:
        stored = session.execute(
            select(Observation.id, Observation.effective_at).where(
                Observation.patient_id == made["_patient_id"]
            )
        ).all()
    names = made["Observation"]
    assert {names[str(i)]: t for i, t in stored} == {n: _at(w) for n, w in IN_SECOND.items()}
    return made


def _found(
    client: FlaskClient, creds: Credentials, kind: str, made: dict[str, Any], queries: Any
) -> dict[str, set[str]]:
    """What each query finds (its ``date`` values joined by ``&``), by name: one dict, so
    that a failure shows every boundary at once."""
    return {
        query: _names(_search(client, creds, kind, made["patient"], *query.split("&")), made[kind])
        for query in queries
    }


def test_observation_second_is_a_range(
    client: FlaskClient, creds: Credentials, seconds: dict[str, Any]
) -> None:
    expected = {
        # A second is 10:15:30.000000 up to (not including) 10:15:31, with or without
        # its zone: the time of 10:15:30.4 is found by eq, ge and le, not gt nor lt.
        SECOND: THE_SECOND,
        f"eq{SECOND}": THE_SECOND,
        f"{SECOND}Z": THE_SECOND,
        "2026-11-29T11:15:30+01:00": THE_SECOND,
        f"ge{SECOND}": THE_SECOND | {"next-second"},
        f"gt{SECOND}": {"next-second"},
        f"le{SECOND}": {"second-before"} | THE_SECOND,
        f"lt{SECOND}": {"second-before"},
        f"ge{SECOND}&le{SECOND}": THE_SECOND,
        # The minute holds the second, as before.
        "2026-11-29T10:15": set(IN_SECOND),
    }
    assert _found(client, creds, "Observation", seconds, expected) == expected


def test_observation_fraction_is_as_wide_as_its_digits(
    client: FlaskClient, creds: Credentials, seconds: dict[str, Any]
) -> None:
    expected = {
        # .4 is [.4, .5).
        f"{SECOND}.4": THE_TENTH,
        f"ge{SECOND}.4": THE_TENTH | {"second-end", "next-second"},
        f"gt{SECOND}.4": {"second-end", "next-second"},
        f"le{SECOND}.4": {"second-before", "second-start"} | THE_TENTH,
        f"lt{SECOND}.4": {"second-before", "second-start"},
        # .40 is [.40, .41), .400 a millisecond, .499999 a microsecond.
        f"{SECOND}.40Z": {"tenth-start"},
        f"{SECOND}.400": {"tenth-start"},
        f"{SECOND}.499999": {"tenth-end"},
        f"gt{SECOND}.499998": {"tenth-end", "second-end", "next-second"},
        f"{SECOND}.000000": {"second-start"},
        f"{SECOND}.5": set(),
        # Digits past the sixth are cut, as ingestion cuts a time's.
        f"{SECOND}.4000009": {"tenth-start"},
    }
    assert _found(client, creds, "Observation", seconds, expected) == expected


def test_encounter_period_against_a_second(
    client: FlaskClient, creds: Credentials, seconds: dict[str, Any]
) -> None:
    expected = {
        # The period lies within the second.
        SECOND: {"within-second"},
        # It reaches the second or later.
        f"ge{SECOND}": set(SECOND_STAYS),
        # It goes on past the second's end (at 10:15:31 or after, or open).
        f"gt{SECOND}": {"starts-in-second", "ends-at-next-second"},
        # It began by the second's end; before its start.
        f"le{SECOND}": set(SECOND_STAYS),
        f"lt{SECOND}": {"ends-in-second"},
        # Against [.4, .5).
        f"{SECOND}.4": set(),
        f"gt{SECOND}.4": {"within-second", "starts-in-second", "ends-at-next-second"},
        f"le{SECOND}.4": {"ends-in-second", "within-second", "starts-in-second"},
        f"lt{SECOND}.4": {"ends-in-second", "within-second"},
        f"ge{SECOND}.5": {"within-second", "starts-in-second", "ends-at-next-second"},
    }
    assert _found(client, creds, "Encounter", seconds, expected) == expected


@pytest.mark.usefixtures("champion")
def test_risk_assessment_second_is_a_range(
    app: Flask, client: FlaskClient, creds: Credentials, seconds: dict[str, Any]
) -> None:
    at = {"second-before": IN_SECOND["second-before"], "tenth": IN_SECOND["tenth-start"]}
    at["next-second"] = IN_SECOND["next-second"]
    names = _add_risks(app, seconds, at)
    expected = {
        SECOND: {"tenth"},
        f"ge{SECOND}": {"tenth", "next-second"},
        f"gt{SECOND}": {"next-second"},
        f"le{SECOND}": {"second-before", "tenth"},
        f"lt{SECOND}": {"second-before"},
        f"{SECOND}.4": {"tenth"},
        f"gt{SECOND}.4": {"next-second"},
        f"lt{SECOND}.4": {"second-before"},
    }
    assert (
        _found(client, creds, "RiskAssessment", {**seconds, "RiskAssessment": names}, expected)
        == expected
    )
