"""The OpenAPI document describes every /api/v1 route, and the docs page needs no CDN."""

from __future__ import annotations

import json
import re

import jsonschema
from flask import Flask
from flask.testing import FlaskClient

from vitalcast.serving.openapi import api_rules, undocumented_routes


def _document(client: FlaskClient) -> dict:  # type: ignore[type-arg]
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_every_api_route_is_in_the_document(app: Flask, client: FlaskClient) -> None:
    assert undocumented_routes(app) == []
    doc = _document(client)
    assert doc["openapi"].startswith("3.1")
    for rule in api_rules(app):
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (method, path)


def test_a_route_without_an_operation_is_reported(app: Flask) -> None:
    """The check above can fail: an undocumented /api/v1 route is found."""
    from vitalcast.security.permissions import Permission, requires

    @requires(Permission.PATIENTS_READ)
    def stray() -> str:
        return ""

    app.add_url_rule("/api/v1/stray", endpoint="stray", view_func=stray)
    assert undocumented_routes(app) == ["['GET'] /api/v1/stray"]


def test_document_is_valid_openapi_and_errors_share_one_shape(client: FlaskClient) -> None:
    doc = _document(client)
    # Every schema in the document is a valid JSON Schema (2020-12, as OpenAPI 3.1 says).
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs
    assert refs <= set(doc["components"]["schemas"]), "dangling $ref"
    security = doc["components"]["securitySchemes"]
    assert security["apiKey"] == security["apiKey"] | {"type": "http", "scheme": "bearer"}
    assert security["session"]["in"] == "cookie"
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            protected = bool(op["security"])
            if protected:
                assert {"401", "403"} <= codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref
    predict = doc["paths"]["/api/v1/predict"]["post"]
    assert "503" in predict["responses"]
    assert "predictions:create" in predict["description"]


def test_docs_page_is_served_from_the_package(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/v1/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), f"{asset} would need the internet"
        assert client.get(asset).status_code == 200, asset
    script = client.get("/api/docs/docs.js").get_data(as_text=True)
    assert "http://" not in script
    assert "https://" not in script
    assert "'self'" in page.headers["Content-Security-Policy"]


def test_api_guide_reference_is_generated_from_the_document(client: FlaskClient) -> None:
    from pathlib import Path

    from vitalcast.serving.openapi_markdown import BEGIN, END, reference_markdown

    guide = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    start, stop = guide.index(BEGIN), guide.index(END) + len(END)
    assert guide[start:stop] == reference_markdown(_document(client)), (
        "regenerate the reference: python -m vitalcast.serving.openapi_markdown"
    )
