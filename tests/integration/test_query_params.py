"""Every ``/api/v1`` route refuses query parameters it does not take (422 at
``["query", name]``): a misspelt filter silently dropped answers another question, e.g.
an audit query for denied accesses that lists every event."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import Credentials


@pytest.mark.parametrize(
    ("role", "path", "unknown"),
    [
        ("admin", "/api/v1/audit-events?outcome=denied&since=garbage", {"outcome", "since"}),
        ("admin", "/api/v1/audit-events?patient_id=p1&patient=p2", {"patient"}),
        ("clinician", "/api/v1/patients?unti=MICU", {"unti"}),
        ("admin", "/api/v1/monitoring/alerts?limit=abc", {"limit"}),
        ("admin", "/api/v1/monitoring/summary?taks=readmission-30d", {"taks"}),
        ("admin", "/api/v1/users?role=admin", {"role"}),
        ("admin", "/api/v1/models/v1?_=1712345678", {"_"}),
    ],
)
def test_unknown_query_parameters_are_422(
    client: FlaskClient, creds: Credentials, role: str, path: str, unknown: set[str]
) -> None:
    response = client.get(path, headers=creds.api_key(role))
    assert response.status_code == 422, response.get_data(as_text=True)
    details = response.get_json()["error"]["details"]
    assert {tuple(d["loc"]) for d in details} >= {("query", name) for name in unknown}
    assert all("this route takes" in d["msg"] for d in details if d["loc"][1] in unknown)


def test_unknown_and_bad_values_are_reported_together(
    client: FlaskClient, creds: Credentials
) -> None:
    response = client.get("/api/v1/patients?limit=0&unti=MICU", headers=creds.api_key("admin"))
    assert response.status_code == 422
    details = response.get_json()["error"]["details"]
    assert {tuple(d["loc"]) for d in details} == {("query", "limit"), ("query", "unti")}
    unti = next(d for d in details if d["loc"] == ["query", "unti"])
    assert unti["msg"] == "unknown parameter; this route takes limit, offset, unit"


def test_declared_parameters_still_work(client: FlaskClient, creds: Credentials) -> None:
    headers = creds.api_key("admin")
    for path in (
        "/api/v1/monitoring/alerts?all=1",
        "/api/v1/monitoring/summary?task=icu-mortality",
        "/api/v1/patients?unit=MICU&limit=5",
        "/api/v1/audit-events?event=patient.list",
    ):
        assert client.get(path, headers=headers).status_code == 200, path


def test_a_401_comes_before_the_422(client: FlaskClient) -> None:
    assert client.get("/api/v1/patients?unti=MICU").status_code == 401


def test_every_documented_route_answers_422(client: FlaskClient) -> None:
    """The OpenAPI document stays true: every operation lists the 422 it can now give."""
    document = client.get("/api/v1/openapi.json").get_json()
    operations = [(method, path) for path, ops in document["paths"].items() for method in ops]
    assert len(operations) > 15
    for method, path in operations:
        assert "422" in document["paths"][path][method]["responses"], (method, path)
