"""FHIR searches (``/fhir``) answer every match or say how to get the rest, apply every
parameter they are given and refuse the ones they would not apply; real app, PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.observation import Observation as FhirObservation
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db import session_scope
from vitalcast.modeling.tables import Prediction
from vitalcast.security.tables import AuditEvent
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


def _measured(app: Flask, public_id: str, *codes: str) -> int:
    """How many height and weight values (of ``codes``; all if none) the patient's stays
    hold as encounter columns, which /fhir serves as Observations beside the stored ones."""
    columns = {"29463-7": Encounter.weight_kg, "8302-2": Encounter.height_cm}
    return sum(
        _count(app, Encounter, public_id, column.is_not(None))
        for code, column in columns.items()
        if not codes or code in codes
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
    if model is Observation:
        matches += _measured(app, patient)
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
    every = _count(app, Observation, patient) + _measured(app, patient)
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


@pytest.fixture
def stays(app: Flask, ward: list[str]) -> dict[str, tuple[str, datetime]]:
    """The ward's first patient with a measured height (172.5 cm) and weight (81.4 kg),
    the second with a weight (64.0 kg) and no height; each patient → (stay, admission)."""
    out = {}
    with session_scope(get_state(app).sessions) as session:
        for public_id, height, weight in ((ward[0], 172.5, 81.4), (ward[1], None, 64.0)):
            enc = session.scalar(
                select(Encounter).join(Patient).where(Patient.public_id == public_id)
            )
            assert enc is not None
            enc.height_cm, enc.weight_kg = height, weight
            out[public_id] = (enc.public_id, enc.admitted_at)
    return out


class Measured(NamedTuple):
    """The first patient of :func:`stays` (height and weight) and a clinician's key."""

    patient: str
    stay: str
    admitted: datetime
    headers: dict[str, str]


@pytest.fixture
def measured(creds: Credentials, stays: dict[str, tuple[str, datetime]]) -> Measured:
    patient, (stay, admitted) = next(iter(stays.items()))
    return Measured(patient, stay, admitted, creds.api_key("clinician"))


def _entries(client: FlaskClient, headers: dict[str, str], **query: str) -> dict[str, Any]:
    """A search's Observations by id (its one page), each valid R4."""
    response = client.get("/fhir/Observation", query_string=query, headers=headers)
    assert response.status_code == 200, response.get_json()
    found = {e["resource"]["id"]: e["resource"] for e in response.get_json().get("entry", [])}
    for resource in found.values():
        FhirObservation.model_validate(resource)
    return found


def test_a_stays_height_and_weight_are_vital_sign_observations(
    app: Flask, client: FlaskClient, measured: Measured
) -> None:
    patient, stay, admitted, headers = measured
    found = _entries(client, headers, patient=patient)
    vital_signs = "http://terminology.hl7.org/CodeSystem/observation-category"
    for suffix, code, display, value, unit in (
        ("weight", "29463-7", "Body weight", 81.4, "kg"),
        ("height", "8302-2", "Body height", 172.5, "cm"),
    ):
        resource = found[f"{stay}-{suffix}"]
        assert resource["category"] == [
            {"coding": [{"system": vital_signs, "code": "vital-signs"}]}
        ]
        assert resource["code"]["coding"] == [
            {"system": "http://loinc.org", "code": code, "display": display}
        ]
        assert resource["valueQuantity"] == {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        }
        assert resource["subject"] == {"reference": f"Patient/{patient}"}
        assert resource["encounter"] == {"reference": f"Encounter/{stay}"}
        # The store keeps no time of measurement: the admission is the time it knows.
        assert datetime.fromisoformat(resource["effectiveDateTime"]) == admitted
        assert patient not in resource["id"]
    # Stored observations name their stay too, and are counted with the derived ones.
    stored = [r for i, r in found.items() if i.isdigit()]
    assert stored
    assert all(r["encounter"] == {"reference": f"Encounter/{stay}"} for r in stored)
    total = client.get(f"/fhir/Observation?patient={patient}&_count=1", headers=headers)
    assert total.get_json()["total"] == _count(app, Observation, patient) + 2 == len(found)


def test_code_search_finds_the_stays_weight_and_not_its_height(
    app: Flask, client: FlaskClient, measured: Measured
) -> None:
    patient, stay, _, headers = measured
    for code in ("29463-7", "http://loinc.org|29463-7"):
        found = _entries(client, headers, subject=f"Patient/{patient}", code=code)
        assert f"{stay}-weight" in found
        assert f"{stay}-height" not in found
        assert len(found) == _count(app, Observation, patient, Observation.code == "29463-7") + 1
    assert not {f"{stay}-weight", f"{stay}-height"} & set(
        _entries(client, headers, patient=patient, code="8867-4")
    )
    assert f"{stay}-height" in _entries(client, headers, patient=patient, code="8302-2,8867-4")


def test_date_search_applies_to_the_admission_time_of_height_and_weight(
    client: FlaskClient, measured: Measured
) -> None:
    patient, stay, admitted, headers = measured
    derived = {f"{stay}-weight", f"{stay}-height"}
    minute = admitted.strftime("%Y-%m-%dT%H:%MZ")
    after = (admitted + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%MZ")
    assert derived <= set(_entries(client, headers, patient=patient, date=minute))
    assert derived <= set(_entries(client, headers, patient=patient, date=f"le{minute}"))
    assert not derived & set(_entries(client, headers, patient=patient, date=f"lt{minute}"))
    assert not derived & set(_entries(client, headers, patient=patient, date=f"ge{after}"))
    # Sorted and paged with the stored rows: newest first, they come last.
    pages = _all_pages(client, f"/fhir/Observation?patient={patient}&_sort=-date&_count=9", headers)
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    times = [e["resource"]["effectiveDateTime"] for p in pages for e in p["entry"]]
    assert times == sorted(times, reverse=True)
    assert derived <= set(ids)
    assert len(ids) == len(set(ids)) == pages[0]["total"]


def test_height_and_weight_are_read_by_id_and_audited(
    app: Flask, client: FlaskClient, measured: Measured
) -> None:
    patient, stay, _, headers = measured
    found = _entries(client, headers, patient=patient)
    stored = next(i for i in found if i.isdigit())
    for observation_id in (f"{stay}-weight", f"{stay}-height", stored):
        response = client.get(f"/fhir/Observation/{observation_id}", headers=headers)
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == found[observation_id]
        FhirObservation.model_validate(response.get_json())
    with get_state(app).sessions() as session:
        audited = session.scalars(
            select(AuditEvent.patient_id).where(
                AuditEvent.event == "observation.viewed",
                AuditEvent.resource == f"fhir/Observation/{stay}-weight",
            )
        ).all()
    assert audited == [patient]
    for unknown in (f"{stay}-pulse", f"{stay}weight", "0", "x" * 40 + "-weight"):
        missing = client.get(f"/fhir/Observation/{unknown}", headers=headers)
        assert missing.status_code == 404, unknown
        assert missing.get_json()["resourceType"] == "OperationOutcome"
    metadata = client.get("/fhir/metadata").get_json()["rest"][0]["resource"]
    observation = next(r for r in metadata if r["type"] == "Observation")
    assert {"code": "read"} in observation["interaction"]


def test_an_absent_height_is_no_observation(
    client: FlaskClient, creds: Credentials, stays: dict[str, tuple[str, datetime]]
) -> None:
    headers = creds.api_key("clinician")
    patient, (stay, _) = list(stays.items())[1]
    found = _entries(client, headers, patient=patient)
    assert found[f"{stay}-weight"]["valueQuantity"]["value"] == 64.0
    assert f"{stay}-height" not in found
    assert not _entries(client, headers, patient=patient, code="8302-2")
    assert client.get(f"/fhir/Observation/{stay}-height", headers=headers).status_code == 404


def test_another_units_user_sees_no_height_or_weight(
    app: Flask, client: FlaskClient, creds: Credentials, stays: dict[str, tuple[str, datetime]]
) -> None:
    patient, (stay, _) = next(iter(stays.items()))
    with get_state(app).sessions() as session:
        unit = session.scalar(select(Encounter.unit).where(Encounter.public_id == stay))
    creds.login(client, creds.user("elsewhere", "clinician", units=[f"not-{unit}"]))
    refused = client.get(f"/fhir/Observation?patient={patient}")
    assert refused.status_code == 404
    unknown = client.get("/fhir/Observation/999999999999").get_data()
    for observation_id in (f"{stay}-weight", f"{stay}-height"):
        response = client.get(f"/fhir/Observation/{observation_id}")
        assert response.status_code == 404
        assert response.get_data() == unknown  # as if there were no such Observation
    # The caller's own unit's user reads it.
    creds.login(client, creds.user("same-unit", "clinician", units=[str(unit)]))
    assert client.get(f"/fhir/Observation/{stay}-weight").status_code == 200
