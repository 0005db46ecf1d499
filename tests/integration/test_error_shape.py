"""One error shape for every error, across endpoints (JSON for API clients, pages for people)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import Credentials


def _assert_shape(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["details"], list)
    assert len(error["request_id"]) >= 8


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/patients"), ("POST", "/api/v1/predict"), ("GET", "/api/v1/nope")],
)
def test_unauthenticated_api_calls_get_401_shape(
    client: FlaskClient, method: str, path: str
) -> None:
    response = client.open(path, method=method)
    expected = 404 if path.endswith("nope") else 401
    assert response.status_code == expected
    _assert_shape(response.get_json(), "not_found" if expected == 404 else "unauthorized")


def test_bad_inputs_get_their_status_and_shape(client: FlaskClient, creds: Credentials) -> None:
    headers = creds.api_key("integration")
    cases = [
        (client.get("/api/v1/patients?limit=0&offset=x", headers=headers), 422, "invalid_input"),
        (client.post("/api/v1/predict", data=b"{nope", headers=headers), 400, "bad_request"),
        (client.post("/api/v1/predict", data=b"\xff\xfe", headers=headers), 400, "bad_request"),
        (client.put("/api/v1/patients", headers=headers), 405, "method_not_allowed"),
        (
            client.post("/api/v1/predict", data=b"x" * (11 * 1024 * 1024), headers=headers),
            413,
            "payload_too_large",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.get_data(as_text=True)
        _assert_shape(response.get_json(), code)
    details = cases[0][0].get_json()["error"]["details"]
    assert {tuple(d["loc"]) for d in details} == {("query", "limit"), ("query", "offset")}


def test_browser_gets_an_error_page_with_request_id(client: FlaskClient) -> None:
    response = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "Not found (404)" in html
    assert response.headers["X-Request-ID"] in html
    assert "Traceback" not in html


@pytest.mark.parametrize(
    ("path", "accept", "allowed"),
    [
        ("/api/v1/patients", "application/json", {"GET", "HEAD", "OPTIONS"}),
        ("/api/v1/observations", "application/json", {"POST", "OPTIONS"}),
        ("/login", "text/html", {"GET", "HEAD", "OPTIONS", "POST"}),
    ],
)
def test_method_not_allowed_says_which_are(
    client: FlaskClient, creds: Credentials, path: str, accept: str, allowed: set[str]
) -> None:
    """A 405 carries the Allow header (RFC 9110 15.5.6), on API routes and pages alike."""
    headers = creds.api_key("integration") | {"Accept": accept}
    response = client.open(path, method="DELETE", headers=headers)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    if accept == "application/json":
        _assert_shape(response.get_json(), "method_not_allowed")
