"""FHIR searches (``/fhir``) answer every match or say how to get the rest, apply every
parameter they are given and refuse the ones they would not apply; real app, PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db import session_scope
from vitalcast.modeling.tables import Prediction
from vitalcast.serving.state import get_state


def _count(app: Flask, model: Any, public_id: str, *where: Any) -> int:
    with get_state(app).sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(model)
                .join(Patient, Patient.id == model.patient_id)
                .where(Patient.public_id == public_id, *where)
            )
            or 0
        )


@pytest.fixture
def history(app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]) -> str:
    """The ward's first patient with earlier stays (two admitted at the same minute) and
    several risks of the current one; returns the patient's public id."""
    patient = ward[0]
    with session_scope(get_state(app).sessions) as session:
        row = session.scalar(select(Patient).where(Patient.public_id == patient))
        assert row is not None
        for days, ref in ((40, "a"), (40, "b"), (90, "c"), (200, "d")):
            admitted = datetime.now(UTC) - timedelta(days=days)
            session.add(
                Encounter(
                    patient_id=row.id,
                    source="test",
                    source_ref=f"earlier-{ref}",
                    unit="MICU",
                    admitted_at=admitted,
                    discharged_at=admitted + timedelta(days=3),
                )
            )
    for _ in range(3):
        scored = client.post(
            "/api/v1/predict", json={"patient_id": patient}, headers=creds.api_key("clinician")
        )
        assert scored.status_code == 200, scored.get_json()
    return patient


def _all_pages(client: FlaskClient, first: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every page of a search, following ``next`` links as a FHIR client does."""
    pages = []
    url: str | None = first
    while url is not None:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        pages.append(page)
        links = {link["relation"]: link["url"] for link in page.get("link", [])}
        assert "self" in links
        url = links.get("next")
        if url is not None:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc) == ("http", "localhost")
            query = dict(parse_qsl(parts.query))
            # The link carries the query's own parameters, no other identifier.
            assert set(query) <= {"patient", "subject", "code", "date", "_sort", "_count"} | {
                "_offset",
                "status",
            }
            url = f"{parts.path}?{parts.query}"
        assert len(pages) < 100, "the next links never end"
    return pages


@pytest.mark.parametrize(
    ("kind", "model", "where"),
    [
        ("Observation", Observation, ()),
        ("Encounter", Encounter, ()),
        ("RiskAssessment", Prediction, (Prediction.role == "champion",)),
    ],
)
def test_total_counts_every_match_and_next_links_reach_them_all(
    app: Flask,
    client: FlaskClient,
    creds: Credentials,
    history: str,
    kind: str,
    model: Any,
    where: tuple[Any, ...],
) -> None:
    headers = creds.api_key("clinician")
    patient = history
    matches = _count(app, model, patient, *where)
    size = max(1, matches // 3)  # three or four pages
    assert matches > size, f"the ward's first patient needs several {kind} rows"
    pages = _all_pages(client, f"/fhir/{kind}?patient={patient}&_count={size}", headers)
    assert {p["total"] for p in pages} == {matches}
    ids = [e["resource"]["id"] for p in pages for e in p.get("entry", [])]
    assert len(ids) == len(set(ids)) == matches
    assert len(pages) == -(-matches // size)
    assert patient not in str(pages[0]["link"][0]["url"]).replace(f"patient={patient}", "")


def test_observation_pages_keep_their_sort_and_filters(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("clinician")
    patient = ward[0]
    pages = _all_pages(
        client, f"/fhir/Observation?patient={patient}&code=8867-4&_sort=-date&_count=7", headers
    )
    times = [e["resource"]["effectiveDateTime"] for p in pages for e in p.get("entry", [])]
    assert times == sorted(times, reverse=True)
    assert len(times) == _count(app, Observation, patient, Observation.code == "8867-4") > 7
    codes = {e["resource"]["code"]["coding"][0]["code"] for p in pages for e in p["entry"]}
    assert codes == {"8867-4"}


def test_code_tokens_or_on_commas_and_match_the_system(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("clinician")
    patient = ward[0]

    def total(code: str) -> int:
        response = client.get(
            "/fhir/Observation", query_string={"patient": patient, "code": code}, headers=headers
        )
        assert response.status_code == 200, response.get_json()
        return int(response.get_json()["total"])

    hr = _count(app, Observation, patient, Observation.code == "8867-4")
    rr = _count(app, Observation, patient, Observation.code == "9279-1")
    assert hr > 0
    assert rr > 0
    assert total("8867-4,9279-1") == hr + rr
    assert total("http://loinc.org|8867-4,http://loinc.org|9279-1") == hr + rr
    assert total("http://loinc.org|8867-4") == hr
    assert total("urn:vitalcast:codes|8867-4") == 0  # heart rate is a LOINC code
    assert total("|8867-4") == 0  # asks for the code without a system
    every = _count(app, Observation, patient)
    local = _count(app, Observation, patient, Observation.code == "mech-vent")
    assert total("http://loinc.org|") == every - local
    # Repeated code parameters are ANDed, as FHIR says: one code cannot be two.
    both = client.get(
        f"/fhir/Observation?patient={patient}&code=8867-4&code=9279-1", headers=headers
    )
    assert both.get_json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("Observation?patient={p}&patient={p}", "patient"),
        ("Observation?patient={p}&subject=Patient/{p}", "subject"),
        ("Encounter?patient={p}&patient=Patient/{p}", "patient"),
        ("RiskAssessment?patient={p}&patient={p}", "patient"),
        ("Observation?patient={p}&category=vital-signs", "category"),
        ("Observation?patient={p}&code:text=pulse", "code:text"),
        ("Encounter?patient={p}&_sort=-date", "_sort"),
        ("RiskAssessment?patient={p}&_count=5&_count=6", "_count"),
        ("Observation?patient={p}&_offset=-1", "_offset"),
        ("Observation?patient={p}&_format=xml", "_format"),
    ],
)
def test_repeated_and_unknown_parameters_are_refused(
    client: FlaskClient, creds: Credentials, ward: list[str], query: str, loc: str
) -> None:
    response = client.get(f"/fhir/{query.format(p=ward[0])}", headers=creds.api_key("clinician"))
    assert response.status_code == 422, response.get_data(as_text=True)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    issues = outcome["issue"]
    assert all(i["diagnostics"].startswith("invalid FHIR search parameters: ") for i in issues)
    assert [loc] in [i.get("expression") for i in issues]
    assert ward[0] not in response.get_data(as_text=True)


def test_capability_statement_declares_what_the_searches_accept(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("clinician")
    rest = client.get("/fhir/metadata").get_json()["rest"][0]["resource"]
    declared = {r["type"]: {p["name"] for p in r.get("searchParam", [])} for r in rest}
    assert declared["RiskAssessment"] == {"patient", "subject", "date"}
    values = {"status": "finished", "code": "8867-4", "date": "ge2000-01-01T00:00:00Z"}
    for kind, names in declared.items():
        if kind == "Patient":
            continue
        for name in names - {"patient", "subject"}:
            query = {"patient": ward[0], name: values[name]}
            response = client.get(f"/fhir/{kind}", query_string=query, headers=headers)
            assert response.status_code == 200, (kind, name, response.get_json())
