"""Batch predictions and the model registry API, on real PostgreSQL with a trained model."""

from __future__ import annotations

import math

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.clinical.codes import BY_KEY
from vitalcast.features.stay import implausible
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.schemas import MAX_BATCH_ROWS
from vitalcast.serving.state import get_state


def _rows(app: Flask, n: int) -> list[dict[str, object]]:
    """``n`` varied rows: numeric features drawn around 1, some left missing."""
    predictor = get_state(app).predictor
    assert predictor is not None
    rng = np.random.default_rng(3)
    numeric = [f for f in predictor.feature_names if f not in predictor.scorer.categories]
    rows = []
    for _ in range(n):
        chosen = rng.choice(numeric, size=min(10, len(numeric)), replace=False)
        row = {str(f): float(rng.normal(1.0, 0.5)) for f in chosen}
        if "age_years" in row:  # an adult: a child's row is refused (test_stay_population)
            row["age_years"] = float(rng.uniform(15, 95))
        if "hours_since_admission" in row:  # scored during the stay: hours before it are a 422
            row["hours_since_admission"] = abs(row["hours_since_admission"])
        for name, value in row.items():  # a value no stay can have is a 422 (test_api.py)
            if implausible(name, value) is not None:
                row[name] = abs(value)
            if implausible(name, row[name]) is not None:
                row[name] = _plausible(name, rng)
        rows.append(row)
    return rows


def _plausible(name: str, rng: np.random.Generator) -> float:
    """A value inside the plausible range of the variable ``name`` summarises."""
    key = {"height_cm": "height", "weight_kg": "weight"}.get(name) or max(
        (k for k in BY_KEY if name.startswith(k + "_")), key=len
    )
    spec = BY_KEY[key]
    return float(rng.uniform(spec.low + 1e-3, spec.high))


def test_batch_equals_single_predictions_and_is_audited(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("integration")
    rows = _rows(app, 40)
    response = client.post("/api/v1/predict/batch", json={"rows": rows}, headers=headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    predictor = get_state(app).predictor
    assert predictor is not None
    assert body["count"] == 40
    assert body["model_version"] == predictor.version
    for row, item in zip(rows, body["items"], strict=True):
        expected = predictor.model.predict_proba_row(
            {n: row.get(n, math.nan) for n in predictor.feature_names}
        )
        assert abs(item["probability"] - expected) < 1e-6
        assert item["band"] == predictor.model.band(item["probability"])
        assert set(item["missing"]) == set(predictor.feature_names) - set(row)
        assert item["factors"] is None
    with get_state(app).sessions() as session:
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "prediction.batch.served")
        ).one()
    assert audit.resource == f"PredictionBatch/{body['batch_id']}"
    assert audit.details["rows"] == 40


def test_batch_with_factors(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("integration")
    response = client.post(
        "/api/v1/predict/batch?explain=true", json={"rows": _rows(app, 3)}, headers=headers
    )
    assert response.status_code == 200, response.get_json()
    assert all(item["factors"] for item in response.get_json()["items"])
    too_many = client.post(
        "/api/v1/predict/batch?explain=true", json={"rows": _rows(app, 101)}, headers=headers
    )
    assert too_many.status_code == 422
    assert too_many.get_json()["error"]["details"][0]["loc"] == ["query", "explain"]


def test_batch_reports_every_problem_with_its_row(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    rows = _rows(app, 5)
    feature = next(iter(rows[1]))
    rows[1][feature] = "high"
    rows[3]["no_such_feature"] = 1
    rows[4][feature] = 1e300
    rows.insert(2, "not an object")  # type: ignore[arg-type]
    response = client.post(
        "/api/v1/predict/batch", json={"rows": rows}, headers=creds.api_key("integration")
    )
    assert response.status_code == 422
    locs = [d["loc"] for d in response.get_json()["error"]["details"]]
    assert locs == [
        ["body", "rows", 1, feature],
        ["body", "rows", 2],
        ["body", "rows", 4, "no_such_feature"],
        ["body", "rows", 5, feature],
    ]


def test_batch_limits_and_shape(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("integration")
    over = client.post(
        "/api/v1/predict/batch", json={"rows": [{}] * (MAX_BATCH_ROWS + 1)}, headers=headers
    )
    assert over.status_code == 413
    assert over.get_json()["error"]["code"] == "payload_too_large"
    full = client.post(
        "/api/v1/predict/batch", json={"rows": _rows(app, MAX_BATCH_ROWS)}, headers=headers
    )
    assert full.status_code == 200
    assert full.get_json()["count"] == MAX_BATCH_ROWS
    empty = client.post("/api/v1/predict/batch", json={"rows": [], "x": 1}, headers=headers)
    assert empty.status_code == 422
    assert {tuple(d["loc"]) for d in empty.get_json()["error"]["details"]} == {
        ("body", "x"),
        ("body", "rows"),
    }
    denied = client.post(
        "/api/v1/predict/batch", json={"rows": [{}]}, headers=creds.api_key("data_scientist")
    )
    assert denied.status_code == 200  # data scientists may score (predictions:create)


def test_batch_without_champion_is_503(client: FlaskClient, creds: Credentials) -> None:
    response = client.post(
        "/api/v1/predict/batch", json={"rows": [{}]}, headers=creds.api_key("integration")
    )
    assert response.status_code == 503


def test_models_list_and_detail(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    headers = creds.api_key("data_scientist")
    listed = client.get("/api/v1/models", headers=headers)
    assert listed.status_code == 200
    items = listed.get_json()["items"]
    predictor = get_state(app).predictor
    assert predictor is not None
    assert [m["version"] for m in items] == [predictor.version]
    assert items[0]["alias"] == "champion"
    assert len(items[0]["sha256"]) == 64
    assert 0 < items[0]["metrics"]["auroc"] <= 1
    detail = client.get(f"/api/v1/models/{predictor.version}", headers=headers).get_json()
    assert detail["loaded"] is True
    assert detail["feature_names"] == predictor.feature_names
    assert client.get("/api/v1/models?task=other", headers=headers).get_json()["items"] == []
    assert client.get("/api/v1/models/nope", headers=headers).status_code == 404
    repeated = client.get("/api/v1/models?task=a&task=b", headers=headers)
    assert repeated.status_code == 422
    assert repeated.get_json()["error"]["details"] == [
        {"loc": ["query", "task"], "msg": "given more than once"}
    ]
    # Integration keys score but do not read the registry (models:read).
    assert client.get("/api/v1/models", headers=creds.api_key("integration")).status_code == 403
