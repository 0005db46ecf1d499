"""Every task's champion is served, not only icu-mortality's.

A data team's `tabular` model (here the UCI Cleveland table and its task file) is trained,
registered as champion, and then scored through ``POST /api/v1/predict`` and
``/predict/batch`` with ``{"task": "tabular", ...}``, on the real app and PostgreSQL: the
answers equal the model's own ``predict_proba``, the factors read in the task file's words,
each ad hoc prediction is stored and audited, and a promotion or demotion reaches the
process through the same watcher as the stay task's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from tests.modeling_data import register_champion
from tests.tabular_data import COLUMNS, heart_task_files
from vitalcast.db import session_scope
from vitalcast.modeling import service
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import TrainOutcome
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.models import refresh_task_champions
from vitalcast.serving.state import get_state

pytestmark = pytest.mark.shared_data


@pytest.fixture
def served(app: Flask, trained_tabular: TrainOutcome) -> TrainOutcome:
    """The app with the Cleveland model as the `tabular` champion, loaded."""
    with session_scope(get_state(app).sessions) as session:
        register_champion(session, trained_tabular)
    assert refresh_task_champions(get_state(app))
    return trained_tabular


@pytest.fixture(scope="module")
def rows(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The first 40 patients of the table as JSON feature objects (missing -> null)."""
    task_file, csv = heart_task_files(shared_data, tmp_path_factory.mktemp("heart"))
    frame = load_dataset(get_task("tabular"), session=None, task_file=task_file, data=csv).X
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in frame.head(40).to_dict(orient="records")
    ]


def test_tabular_champion_scores_one_row_like_its_pipeline(
    app: Flask,
    client: FlaskClient,
    creds: Credentials,
    served: TrainOutcome,
    rows: list[dict[str, Any]],
) -> None:
    model = load_model(served.artifact_path, served.sha256)
    # Served by the compiled scorer, the table's missing categories (thal) included.
    assert get_state(app).task_champions["tabular"].scorer.compiled
    headers = creds.api_key("integration")
    for row in rows[:10]:
        response = client.post(
            "/api/v1/predict", json={"task": "tabular", "features": row}, headers=headers
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["task"] == "tabular"
        assert body["model_version"] == served.version
        assert abs(body["probability"] - model.predict_proba_row(row)) < 1e-6
        assert body["early"] is None
        assert body["factors"]
        for factor in body["factors"]:  # the task file's words, never a column name
            assert factor["label"] not in COLUMNS, factor
    with get_state(app).sessions() as session:
        stored = session.scalars(select(Prediction).where(Prediction.task == "tabular")).all()
        assert len(stored) == 10
        assert all(p.role == "adhoc" and p.patient_id is None for p in stored)
        served_events = session.scalars(
            select(AuditEvent.resource).where(AuditEvent.event == "prediction.served")
        ).all()
    assert {f"Prediction/{p.public_id}" for p in stored} <= set(served_events)


def test_tabular_batch_equals_the_pipeline_on_the_frame(
    client: FlaskClient, creds: Credentials, served: TrainOutcome, rows: list[dict[str, Any]]
) -> None:
    model = load_model(served.artifact_path, served.sha256)
    response = client.post(
        "/api/v1/predict/batch?explain=true",
        json={"task": "tabular", "rows": rows},
        headers=creds.api_key("integration"),
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["task"] == "tabular"
    assert body["count"] == len(rows)
    expected = model.predict_proba(model.frame_of(rows))
    got = [item["probability"] for item in body["items"]]
    assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) < 1e-6
    assert all(item["factors"] for item in body["items"])


def test_each_task_validates_against_its_own_champion(
    client: FlaskClient,
    creds: Credentials,
    served: TrainOutcome,
    ward: list[str],
    rows: list[dict[str, Any]],
) -> None:
    headers = creds.api_key("integration")
    # The stay task's features are not the table's: every one is located under features.
    icu = client.post(
        "/api/v1/predict",
        json={"task": "tabular", "features": {"hr_last_all": 80, "cp": "9.0"}},
        headers=headers,
    )
    assert icu.status_code == 422
    locs = {tuple(d["loc"]) for d in icu.get_json()["error"]["details"]}
    assert locs == {("body", "features", "hr_last_all"), ("body", "features", "cp")}
    # And the table's features are not the stay task's (a flat body is icu-mortality's).
    flat = client.post("/api/v1/predict", json=rows[0], headers=headers)
    assert flat.status_code == 422
    assert ("body", "thalach") in {tuple(d["loc"]) for d in flat.get_json()["error"]["details"]}
    # Naming the stay task explicitly scores with its champion.
    named = client.post(
        "/api/v1/predict", json={"task": "icu-mortality", "features": {}}, headers=headers
    )
    assert named.status_code == 200
    assert named.get_json()["task"] == "icu-mortality"
    batch = client.post(
        "/api/v1/predict/batch",
        json={"task": "tabular", "rows": [rows[0], {"age": "old"}]},
        headers=headers,
    )
    assert batch.status_code == 422
    assert [d["loc"] for d in batch.get_json()["error"]["details"]] == [["body", "rows", 1, "age"]]


@pytest.mark.parametrize(
    ("path", "body", "locs"),
    [
        ("/api/v1/predict", {"task": "sepsis", "features": {}}, {("body", "task")}),
        ("/api/v1/predict", {"task": 7, "features": {}}, {("body", "task")}),
        ("/api/v1/predict", {"task": "tabular"}, {("body", "features")}),
        # A stored patient is scored by icu-mortality or readmission-30d, not by a table.
        ("/api/v1/predict", {"task": "tabular", "patient_id": "x"}, {("body", "patient_id")}),
        (
            "/api/v1/predict",
            {"task": "readmission-30d", "patient_id": "x", "features": {}},
            {("body", "features")},
        ),
        ("/api/v1/predict", {"task": "tabular", "features": [1]}, {("body", "features")}),
        ("/api/v1/predict/batch", {"task": "tabular", "rows": []}, {("body", "rows")}),
        ("/api/v1/predict/batch", {"task": "nope", "rows": [{}]}, {("body", "task")}),
    ],
)
def test_malformed_task_bodies_are_422s_that_say_where(
    client: FlaskClient,
    creds: Credentials,
    served: TrainOutcome,
    path: str,
    body: dict[str, Any],
    locs: set[tuple[str, ...]],
) -> None:
    response = client.post(path, json=body, headers=creds.api_key("integration"))
    assert response.status_code == 422, response.get_json()
    assert {tuple(d["loc"]) for d in response.get_json()["error"]["details"]} == locs


def test_a_task_without_a_champion_is_a_503_naming_it(
    client: FlaskClient, creds: Credentials, served: TrainOutcome
) -> None:
    response = client.post(
        "/api/v1/predict",
        json={"task": "readmission-30d", "features": {}},
        headers=creds.api_key("integration"),
    )
    assert response.status_code == 503
    message = response.get_json()["error"]["message"]
    assert "readmission-30d" in message
    assert "vitalcast train --task readmission-30d" in message


def test_promotion_and_demotion_reach_the_served_task(
    app: Flask,
    client: FlaskClient,
    creds: Credentials,
    served: TrainOutcome,
    rows: list[dict[str, Any]],
    shared_data: Path,
    tmp_path: Path,
) -> None:
    """A second version, trained and promoted, is what the next refresh serves; with the
    champion alias cleared the task answers 503 again."""
    state = get_state(app)
    task_file, csv = heart_task_files(shared_data, tmp_path)
    with session_scope(state.sessions) as session:
        second = service.train_and_register(
            "tabular",
            session=session,
            registry_dir=tmp_path / "registry",
            task_file=task_file,
            data=csv,
            seed=1,
            budget=FAST_BUDGET,
            n_boot=20,
        )
        assert second.alias is None
        assert second.version != served.version
        service.promote(session, version=second.version)
    assert refresh_task_champions(state)
    assert not refresh_task_champions(state)  # nothing changed since
    headers = creds.api_key("integration")
    body = {"task": "tabular", "features": rows[0]}
    answer = client.post("/api/v1/predict", json=body, headers=headers)
    assert answer.status_code == 200
    assert answer.get_json()["model_version"] == second.version
    with session_scope(state.sessions) as session:
        for row in session.scalars(select(ModelVersion).where(ModelVersion.task == "tabular")):
            row.alias = None
    assert refresh_task_champions(state)
    assert client.post("/api/v1/predict", json=body, headers=headers).status_code == 503


def test_the_document_describes_each_loaded_task(
    client: FlaskClient, creds: Credentials, served: TrainOutcome, rows: list[dict[str, Any]]
) -> None:
    headers = creds.api_key("data_scientist")  # models:read
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    table = schemas["Features_tabular"]
    assert set(table["properties"]) == set(rows[0])
    assert table["additionalProperties"] is False
    detail = client.get(f"/api/v1/models/{served.version}", headers=headers).get_json()
    assert detail["loaded"] is True
    assert set(detail["feature_names"]) == set(rows[0])
    assert detail["categories"]["cp"] == ["1.0", "2.0", "3.0", "4.0"]
    variants = schemas["TaskFeatures"]["oneOf"]
    assert [v["properties"]["task"]["const"] for v in variants] == ["tabular"]
    assert table["properties"]["cp"]["enum"] == ["1.0", "2.0", "3.0", "4.0", None]
    # The public document names no value fewer than 5 training patients hold (restecg 1.0:
    # 4 of the Cleveland patients); the authenticated model detail lists every value.
    restecg = table["properties"]["restecg"]
    assert restecg["enum"] == ["0.0", "2.0", None]
    assert "1.0" not in json.dumps(restecg)
    assert "one of the 3 values" in restecg["description"]
    assert detail["categories"]["restecg"] == ["0.0", "1.0", "2.0"]
