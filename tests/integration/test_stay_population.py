"""The stay model scores only the encounters its training data stood for.

icu-mortality learnt from adult ICU stays (PhysioNet 2012). Before the population rule,
every encounter in progress was scored: an outpatient visit or a child's stay got an ICU
mortality risk with the same authority as an adult's ICU stay. These tests drive the real
paths against PostgreSQL: the live rescoring after new data, the rescoring pass after a
promotion, the restart catch-up of the stream processes, the API, the ward and the page.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Credentials
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.modeling.registry import ARTIFACT, SIDECAR
from vitalcast.modeling.service import register_version
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.serving.rescoring import rescore_stays_in_progress, stays_with_unscored_data
from vitalcast.serving.state import get_state
from vitalcast.web.tables import Feedback
from vitalcast.web.ward import build_ward

CLINIC = "An outpatient visit is outside what the model scores"
CHILD = "A patient aged 7 is outside what the model scores"
POPULATION = "ICU and hospital stays of patients aged 15 or over."


@pytest.fixture
def mixed_ward(app: Flask, ward: list[str]) -> dict[str, tuple[str, int]]:
    """The scored ward with three stays changed: an adult's outpatient visit, a 7-year-old's
    ICU stay and an adult's hospital stay. Their earlier risks stand for risks stored
    before the rule existed. Returns role -> (patient public id, encounter id)."""
    roles = {"clinic": ward[0], "child": ward[1], "hospital": ward[2]}
    out = {}
    with session_scope(get_state(app).sessions) as session:
        for role, public_id in roles.items():
            encounter = session.scalars(
                select(Encounter)
                .join(Patient, Patient.id == Encounter.patient_id)
                .where(Patient.public_id == public_id, Encounter.discharged_at.is_(None))
            ).one()
            if role == "clinic":
                encounter.kind = "outpatient"
            elif role == "child":
                encounter.age_years = 7.0
            else:
                encounter.kind = "inpatient"
            out[role] = (public_id, encounter.id)
    return out


def _predictions(app: Flask, encounter_id: int) -> int:
    with get_state(app).sessions() as session:
        return (
            session.scalar(select(func.count()).where(Prediction.encounter_id == encounter_id)) or 0
        )


def test_new_data_rescores_only_stays_inside_the_population(
    app: Flask, client: FlaskClient, creds: Credentials, mixed_ward: dict[str, tuple[str, int]]
) -> None:
    before = {role: _predictions(app, enc) for role, (_p, enc) in mixed_ward.items()}
    now = datetime.now(UTC).isoformat()
    readings = [
        {"code": "8867-4", "value": 121, "unit": "/min", "time": now, "patient": public_id}
        for public_id, _enc in mixed_ward.values()
    ]
    response = client.post(
        "/api/v1/observations", json=readings, headers=creds.api_key("integration")
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["report"]["stored"] == 3  # stored all the same
    assert len(response.get_json()["rescored"]) == 1
    after = {role: _predictions(app, enc) for role, (_p, enc) in mixed_ward.items()}
    assert after == before | {"hospital": before["hospital"] + 1}
    # What a stream process catches up on at start: the two have unscored data, and
    # still are not listed.
    with get_state(app).sessions() as session:
        pending = stays_with_unscored_data(session)
    assert not {mixed_ward["clinic"][1], mixed_ward["child"][1]} & set(pending)


def test_a_new_champion_rescores_only_stays_inside_the_population(
    app: Flask, mixed_ward: dict[str, tuple[str, int]]
) -> None:
    state = get_state(app)
    assert state.predictor is not None
    with state.sessions() as session:
        open_stays = session.scalar(select(func.count()).where(Encounter.discharged_at.is_(None)))
    before = {role: _predictions(app, enc) for role, (_p, enc) in mixed_ward.items()}
    done = rescore_stays_in_progress(state.sessions, state.predictor)
    assert done.stays == open_stays - 2
    after = {role: _predictions(app, enc) for role, (_p, enc) in mixed_ward.items()}
    assert after == before | {"hospital": before["hospital"] + 1}


def test_the_api_says_why_and_shows_no_risk(
    client: FlaskClient, creds: Credentials, mixed_ward: dict[str, tuple[str, int]]
) -> None:
    headers = creds.api_key("integration")
    for role, expected in (("clinic", CLINIC), ("child", CHILD)):
        public_id, _enc = mixed_ward[role]
        scored = client.post("/api/v1/predict", json={"patient_id": public_id}, headers=headers)
        assert scored.status_code == 422, scored.get_json()
        (detail,) = scored.get_json()["error"]["details"]
        assert detail["loc"] == ["body", "patient_id"]
        assert detail["msg"] == f"the latest encounter: {expected}: {POPULATION}"
        assert public_id not in str(scored.get_json())
        chart = client.get(f"/api/v1/patients/{public_id}", headers=headers).get_json()
        # A risk was stored before the rule existed: it is not shown as current.
        assert chart["risk"] is None
        assert chart["encounter"]["outside_population"] == f"{expected}: {POPULATION}"
    public_id, _enc = mixed_ward["hospital"]
    scored = client.post("/api/v1/predict", json={"patient_id": public_id}, headers=headers)
    assert scored.status_code == 200, scored.get_json()
    chart = client.get(f"/api/v1/patients/{public_id}", headers=headers).get_json()
    assert chart["encounter"]["outside_population"] is None
    # One figure on every surface (the predict answer had 6 places, the chart 4).
    probability = scored.get_json()["probability"]
    assert chart["risk"]["probability"] == probability
    ward_rows = client.get("/api/v1/patients?limit=100", headers=headers).get_json()["items"]
    by_id: dict[str, Any] = {row["id"]: row for row in ward_rows}
    assert by_id[mixed_ward["clinic"][0]]["outside_population"] == f"{CLINIC}: {POPULATION}"
    assert by_id[mixed_ward["clinic"][0]]["risk"] is None
    assert by_id[mixed_ward["child"][0]]["risk"] is None
    assert by_id[mixed_ward["hospital"][0]]["outside_population"] is None
    assert by_id[mixed_ward["hospital"][0]]["risk"]["probability"] == probability


def test_the_ward_and_the_patient_page_say_why(
    client: FlaskClient, creds: Credentials, mixed_ward: dict[str, tuple[str, int]]
) -> None:
    """The reason is shown instead of a risk, and there is no risk to respond to: the
    feedback form is not offered, and a verdict posted anyway is refused."""
    token = creds.login(client, creds.user("nurse", "clinician"))
    ward_page = client.get("/ward")
    assert ward_page.status_code == 200
    html = ward_page.get_data(as_text=True)
    assert html.count("Outside model</span>") == 2
    assert f"{CHILD}: {POPULATION}" in html
    page = client.get(f"/patients/{mixed_ward['clinic'][0]}")
    assert page.status_code == 200
    assert f"Not scored. {CLINIC}: {POPULATION}" in page.get_data(as_text=True)
    assert "Your response" not in page.get_data(as_text=True)
    verdict = client.post(
        f"/patients/{mixed_ward['clinic'][0]}/feedback", data={"csrf_token": token, "kind": "agree"}
    )
    assert verdict.status_code == 422
    assert "there is no risk to respond to" in verdict.get_data(as_text=True)
    with get_state(client.application).sessions() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 0
    # A scored stay in progress still offers it.
    scored = client.get(f"/patients/{mixed_ward['hospital'][0]}").get_data(as_text=True)
    assert "Your response" in scored


def test_named_icu_units_leave_other_wards_unscored(
    app: Flask,
    client: FlaskClient,
    creds: Credentials,
    settings: Settings,
    mixed_ward: dict[str, tuple[str, int]],
    trained_model: Any,
    tmp_path: Path,
) -> None:
    """A deployment fed the whole hospital's admissions names its ICU units
    (VITALCAST_STAY_UNITS): a hospital stay on a general ward then gets no ICU risk, on
    new data, through the API, on the ward and after a promotion from the CLI."""
    state = get_state(app)
    state.settings = state.settings.model_copy(update={"stay_units": ["MICU", "SICU"]})
    _public_id, hospital = mixed_ward["hospital"]
    with session_scope(state.sessions) as session:
        session.get_one(Encounter, hospital).unit = "4 West"
        units = dict(
            session.execute(
                select(Encounter.id, Encounter.unit).where(Encounter.discharged_at.is_(None))
            ).all()
        )
    on_named = {i for i, u in units.items() if u in ("MICU", "SICU")} - {
        mixed_ward["child"][1],
        mixed_ward["clinic"][1],
    }
    assert on_named
    assert set(units.values()) - {"MICU", "SICU"}  # other units are in the ward too
    why = (
        "A stay on unit 4 West is outside what the model scores: ICU and hospital stays of"
        " patients aged 15 or over on units MICU, SICU."
    )
    headers = creds.api_key("integration")
    public_id = mixed_ward["hospital"][0]
    now = datetime.now(UTC).isoformat()
    reading = {"code": "8867-4", "value": 121, "unit": "/min", "time": now}
    posted = client.post(
        "/api/v1/observations", json=[reading | {"patient": public_id}], headers=headers
    )
    assert posted.status_code == 201, posted.get_json()
    assert posted.get_json()["rescored"] == []
    chart = client.get(f"/api/v1/patients/{public_id}", headers=headers).get_json()
    assert chart["encounter"]["outside_population"] == why
    assert chart["risk"] is None
    scored = client.post("/api/v1/predict", json={"patient_id": public_id}, headers=headers)
    assert scored.status_code == 422
    rows = client.get("/api/v1/patients?limit=100", headers=headers).get_json()["items"]
    outside = {r["encounter_id"] for r in rows if r["outside_population"]}
    assert len(outside) == len(units) - len(on_named)

    # A promotion from the CLI rescores the stays on the named units only.
    folder = tmp_path / f"{trained_model.version}-b"
    shutil.copytree(Path(trained_model.artifact_path).parent, folder)
    sidecar = json.loads((folder / SIDECAR).read_text())
    (folder / SIDECAR).write_text(json.dumps(sidecar | {"version": folder.name}))
    with session_scope(state.sessions) as session:
        register_version(
            session,
            version=folder.name,
            task="icu-mortality",
            path=folder / ARTIFACT,
            sha256=trained_model.sha256,
            threshold=trained_model.threshold,
            metrics=trained_model.metrics,
        )
    cli_settings = settings.model_copy(update={"stay_units": ["MICU", "SICU"]})
    result = CliRunner().invoke(
        main, ["models", "promote", folder.name], obj={"settings": cli_settings}
    )
    assert result.exit_code == 0, result.output
    assert f"rescored {len(on_named)} stays in progress" in result.output
    with state.sessions() as session:
        newest = set(
            session.scalars(
                select(Prediction.encounter_id)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .where(ModelVersion.version == folder.name)
            )
        )
    assert newest == on_named


def test_stays_outside_the_population_are_never_stale(
    app: Flask, mixed_ward: dict[str, tuple[str, int]]
) -> None:
    """Staleness qualifies a risk: with a zero stale limit every scored stay is stale, and
    the two stays outside the population are neither marked nor counted."""
    state = get_state(app)
    with state.sessions() as session:
        page = build_ward(session, now=datetime.now(UTC), stale_after=timedelta(0))
    outside = {e.row.patient_id for e in page.entries if e.row.outside_population}
    assert outside == {mixed_ward["clinic"][0], mixed_ward["child"][0]}
    assert [e.stale for e in page.entries if e.row.patient_id in outside] == [False, False]
    assert all(e.stale for e in page.entries if e.row.patient_id not in outside)
    assert page.stale_count == len(page.entries) - 2


def test_a_feature_vector_of_a_child_is_refused_as_a_stored_child_is(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    """A flat feature vector has no encounter, but its age is the model's own input: a
    child's vector got the adult ICU model's risk, which the ward withholds for the same
    child's stored stay."""
    headers = creds.api_key("integration")
    child = {"age_years": 7}
    with get_state(app).sessions() as session:
        stored = session.scalar(select(func.count()).select_from(Prediction))
    refused = client.post("/api/v1/predict", json=child, headers=headers)
    assert refused.status_code == 422, refused.get_json()
    error = refused.get_json()["error"]
    assert error["details"] == [{"loc": ["body", "age_years"], "msg": f"{CHILD}: {POPULATION}"}]
    assert error["message"] == f"{CHILD}: {POPULATION}"
    nested = client.post(
        "/api/v1/predict",
        json={"task": "icu-mortality", "features": child},
        headers=headers,
    )
    assert nested.status_code == 422
    assert nested.get_json()["error"]["details"][0]["loc"] == ["body", "features", "age_years"]
    batch = client.post(
        "/api/v1/predict/batch",
        json={"rows": [{"age_years": 40}, child]},
        headers=headers,
    )
    assert batch.status_code == 422
    assert batch.get_json()["error"]["details"] == [
        {"loc": ["body", "rows", 1, "age_years"], "msg": f"{CHILD}: {POPULATION}"}
    ]
    with get_state(app).sessions() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == stored
    for adult in ({"age_years": 15}, {}):  # an unknown age does not exclude
        scored = client.post("/api/v1/predict", json=adult, headers=headers)
        assert scored.status_code == 200, scored.get_json()
