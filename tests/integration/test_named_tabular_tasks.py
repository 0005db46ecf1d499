"""A data team's task files each name their own task, so two tables serve two champions.

Before, every task file trained the one task `tabular`: the second table's model could
only replace the first one's champion, and `evaluate` accepted a task file that defined
another outcome than the model's. Real PostgreSQL, the real CLI, the real app, and the
UCI Cleveland table described twice: any disease (num 1-4) and severe disease (num 3-4).
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
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.model_cli import model_env, refused, run_cli
from tests.tabular_data import TASK_YAML, heart_task_files
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.tables import ModelVersion
from vitalcast.modeling.tasks import get_task
from vitalcast.serving.models import refresh_task_champions
from vitalcast.serving.state import get_state

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

ANY = '["1", "2", "3", "4"]'
SEVERE = '["3", "4"]\nnegative: ["0", "1", "2"]'


def _task_file(folder: Path, name: str | None, positive: str = ANY) -> Path:
    path = folder / f"{name or 'unnamed'}-{len(positive)}.yaml"
    named = f"name: {name}\n" if name is not None else ""
    path.write_text(named + TASK_YAML.replace(ANY, positive))
    return path


def _trained(env: dict[str, str], task_file: Path, csv: Path) -> dict[str, Any]:
    res = run_cli(
        env,
        *("train", "--task", "tabular", "--task-file", str(task_file), "--data", str(csv)),
        *("--budget", "fast", "--json"),
    )
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.output.strip().splitlines()[-1])
    return out


def test_named_task_files_keep_their_own_champions_and_outcomes(
    pg_url: str,
    db_session: Session,
    shared_data: Path,
    tmp_path: Path,
    app: Flask,
    client: FlaskClient,
    creds: Credentials,
) -> None:
    env = model_env(pg_url, tmp_path)
    _, full = heart_task_files(shared_data, tmp_path)
    header, *rows = full.read_text().splitlines()
    csv, unseen = tmp_path / "train.csv", tmp_path / "unseen.csv"
    csv.write_text("\n".join([header, *rows[::2]]) + "\n")
    unseen.write_text("\n".join([header, *rows[1::2]]) + "\n")
    heart = _task_file(tmp_path, "heart")
    severe = _task_file(tmp_path, "heart-severe", SEVERE)

    first = _trained(env, heart, csv)
    second = _trained(env, severe, csv)
    assert (first["task"], second["task"]) == ("tabular:heart", "tabular:heart-severe")
    # Each is its task's first model, so each is champion: neither replaced the other.
    assert first["alias"] == second["alias"] == "champion"
    assert first["version"].startswith("tabular-heart-2")
    assert second["version"].startswith("tabular-heart-severe-")
    listed = run_cli(env, "models", "list", "--task", "tabular:heart", "--json")
    assert [r["version"] for r in json.loads(listed.output)] == [first["version"]]
    # The plain listing says whose each version is (a version name is not the task's).
    table = run_cli(env, "models", "list").output.splitlines()
    assert [line.split()[1] for line in table] == ["tabular:heart-severe", "tabular:heart"]

    # A task file of the other task, or of no name, is not this model's data.
    evaluate = ("evaluate", "--model", first["version"], "--data", str(unseen))
    refused(
        run_cli(env, *evaluate, "--task-file", str(severe)),
        "describes the task tabular:heart-severe, not tabular:heart",
    )
    refused(
        run_cli(env, *evaluate, "--task-file", str(_task_file(tmp_path, None))),
        "describes the task tabular, not tabular:heart",
    )
    # The right name but another outcome: the same features, a different label.
    relabelled = _task_file(tmp_path, "heart", SEVERE)
    refused(
        run_cli(env, *evaluate, "--task-file", str(relabelled)),
        "the task file's outcome is column 'num' = '3', '4'; model"
        f" {first['version']} predicts column 'num' = '1', '2', '3', '4'",
    )
    res = run_cli(env, *evaluate, "--task-file", str(heart), "--json")
    assert res.exit_code == 0, res.output
    # The model card in the UI shows that evaluation beside the internal validation.
    creds.user("dana", "data_scientist")
    browser = app.test_client()
    creds.login(browser, "dana")
    card = browser.get(f"/models/{first['version']}/report").get_data(as_text=True)
    assert "<h2>Validation on unseen data: unseen.csv</h2>" in card
    # A damaged record: no card rather than a card without its figures on unseen data.
    (record,) = (tmp_path / "registry" / first["version"] / "evaluations").glob("*.json")
    intact = record.read_bytes()
    record.write_bytes(intact[:-30])
    page = browser.get(f"/models/{first['version']}/report")
    assert page.status_code == 404
    assert "a stored evaluation cannot be read" in page.get_data(as_text=True)
    record.write_bytes(intact)
    # `--model champion` means the task file's task's champion, not another's.
    res = run_cli(
        env, "evaluate", "--model", "champion", "--task-file", str(severe), "--data", str(unseen)
    )
    assert res.exit_code == 0, res.output
    assert second["version"] in res.output
    refused(run_cli(env, "models", "list", "--task", "tabular:Bad"), "lower-case letters")
    refused(run_cli(env, *evaluate, "--task-file", str(_task_file(tmp_path, "a b"))), "'a b'")

    # Served side by side: each request reaches its task's champion.
    state = get_state(app)
    # The app's own watcher (every 5 s) may have loaded them already: refreshed either way.
    refresh_task_champions(state)
    assert {"tabular:heart", "tabular:heart-severe"} <= set(state.task_champions)
    frame = load_dataset(get_task("tabular:heart"), session=None, task_file=heart, data=unseen).X
    row = {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in frame.iloc[0].to_dict().items()
    }
    headers = creds.api_key("integration")
    for out in (first, second):
        version = db_session.scalars(
            select(ModelVersion).where(ModelVersion.version == out["version"])
        ).one()
        model = load_model(version.artifact_path, version.sha256)
        response = client.post(
            "/api/v1/predict", json={"task": out["task"], "features": row}, headers=headers
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert (body["task"], body["model_version"]) == (out["task"], out["version"])
        assert abs(body["probability"] - model.predict_proba_row(row)) < 1e-6
    response = client.post(
        "/api/v1/predict", json={"task": "tabular:nobody", "features": row}, headers=headers
    )
    assert response.status_code == 503
    response = client.post(
        "/api/v1/predict", json={"task": "sepsis", "features": row}, headers=headers
    )
    assert response.status_code == 422
    assert "tabular:NAME" in json.dumps(response.get_json())
    document = client.get("/api/v1/openapi.json").get_json()
    assert "Features_tabular.heart-severe" in document["components"]["schemas"]


def test_a_second_table_reusing_a_name_for_another_outcome_is_refused(
    pg_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """`name: heart` is what API clients ask for. A second task file that reused the name
    for another outcome (severe disease, not any) joined tabular:heart, and promoting its
    model changed, under the same name, the question the served risk answers."""
    env = model_env(pg_url, tmp_path)
    _, csv = heart_task_files(shared_data, tmp_path)
    first = _trained(env, _task_file(tmp_path, "heart"), csv)
    train = ("train", "--task", "tabular", "--data", str(csv), "--budget", "fast")
    refused(
        run_cli(env, *train, "--task-file", str(_task_file(tmp_path, "heart", SEVERE))),
        "tabular:heart: the task file's outcome is column 'num' = '3', '4'; the task's"
        f" models (such as {first['version']}) predict column 'num' = '1', '2', '3', '4'."
        " A task file of another outcome needs its own `name`",
    )
    listed = run_cli(env, "models", "list", "--task", "tabular:heart", "--json")
    assert [r["version"] for r in json.loads(listed.output)] == [first["version"]]
    # The same outcome under the name trains a new version of the task (a challenger).
    again = run_cli(env, *train, "--seed", "7", "--task-file", str(_task_file(tmp_path, "heart")))
    assert again.exit_code == 0, again.output
