"""Readmission risk of stored encounters: the store gives the training features, and the
readmission champion scores a patient's discharge through the API and the chart.

Real Diabetes 130 rows (patients with several encounters, so their history matters, and
single-encounter patients) are ingested into PostgreSQL by ``vitalcast ingest``'s CSV path
and read back by :mod:`vitalcast.serving.encounter_scoring`; the same file is read by the
training loader. The two must agree on every feature of every encounter in the cohort.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.diabetes_data import diabetes_sample
from tests.modeling_data import register_champion
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.db import session_scope
from vitalcast.features.encounter import (
    EXCLUDED_DISPOSITIONS,
    EncounterInput,
    encounter_order,
    in_readmission_cohort,
    readmission_features,
)
from vitalcast.ingest.files import ingest_csv
from vitalcast.modeling.registry import load_model
from vitalcast.modeling.service import TrainOutcome, train_and_register
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tabular import load_readmission
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.encounter_scoring import encounter_inputs
from vitalcast.serving.models import refresh_task_champions
from vitalcast.serving.state import get_state

pytestmark = pytest.mark.shared_data

MULTI_PATIENTS = 90  # patients with 3+ encounters
SINGLE_PATIENTS = 150


@pytest.fixture(scope="module")
def sample_csv(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every encounter of the first patients (in file order) who have three or more, and
    of the first single-encounter patients, in the file's order."""
    out = tmp_path_factory.mktemp("d130-store") / "sample.csv"
    diabetes_sample(shared_data, out, multi=MULTI_PATIENTS, single=SINGLE_PATIENTS)
    return out


def _ingest(session: Session, path: Path, cipher: FieldCipher) -> None:
    report = ingest_csv(session, path, profile="diabetes130", cipher=cipher)
    assert report.balanced()
    assert report.quarantined == 0
    session.commit()


def _store_frame(session: Session, columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The cohort's features computed from the store, in encounter order, and the patient
    of each row."""
    encounters = sorted(
        session.scalars(select(Encounter)).all(),
        key=lambda e: encounter_order(e.admitted_at, e.source_ref),
    )
    refs = dict(session.execute(select(Patient.id, Patient.source_ref)).all())
    per_patient: dict[int, dict[int, Any]] = {}
    rows, patients = [], []
    for enc in encounters:
        if enc.patient_id not in per_patient:
            per_patient[enc.patient_id] = _by_id(session, enc.patient_id)
        current = per_patient[enc.patient_id][enc.id]
        if not in_readmission_cohort(current.attributes):
            continue
        features = readmission_features(current)
        rows.append({c: features[c] for c in columns})
        patients.append(refs[enc.patient_id])
    return rows, patients


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or abs(fa - fb) < 1e-9
    return bool(a == b)


def test_stored_encounters_give_the_training_features(
    sample_csv: Path, db_session: Session, cipher: FieldCipher
) -> None:
    """Offline (the file, read by the training loader) and online (the same encounters
    ingested, then read back from PostgreSQL) give equal features for every encounter,
    histories included."""
    data = load_readmission(sample_csv)
    _ingest(db_session, sample_csv, cipher)
    columns = list(data.X.columns)
    stored, patients = _store_frame(db_session, columns)

    assert len(stored) == len(data.X)
    assert patients == list(data.groups)
    # The sample exercises what could differ: histories, the cohort rule, a code listed
    # in two diagnosis positions (stored once), and missing diagnoses.
    assert (data.X["prior_encounters"] >= 2).sum() >= MULTI_PATIENTS
    assert data.notes[0] != "0 encounters ending in death or hospice excluded"
    with sample_csv.open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert any(r["diag_1"] == r["diag_3"] != "?" or r["diag_2"] == r["diag_3"] != "?" for r in raw)
    assert any("?" in (r["diag_2"], r["diag_3"]) for r in raw)
    assert any(int(r["discharge_disposition_id"]) in EXCLUDED_DISPOSITIONS for r in raw)
    mismatches = [
        (i, col, expected, got[col])
        for i, (expected_row, got) in enumerate(
            zip(data.X.to_dict(orient="records"), stored, strict=True)
        )
        for col, expected in expected_row.items()
        if not _same(expected, got[col])
    ]
    assert not mismatches, mismatches[:10]


@pytest.fixture(scope="module")
def trained_readmission(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainOutcome:
    """A small readmission-30d model trained on the sample (CI-sized budget)."""
    return train_and_register(
        "readmission-30d",
        session=None,
        registry_dir=tmp_path_factory.mktemp("readmission") / "registry",
        dataset=load_readmission(sample_csv),
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=0,
    )


@pytest.fixture
def stored_cohort(
    app: Flask, sample_csv: Path, trained_readmission: TrainOutcome, cipher: FieldCipher
) -> TrainOutcome:
    """The sample ingested into the app's database, the model its readmission champion."""
    with session_scope(get_state(app).sessions) as session:
        _ingest(session, sample_csv, cipher)
        register_champion(session, trained_readmission)
    assert refresh_task_champions(get_state(app))
    return trained_readmission


def _by_id(session: Session, patient_id: int) -> dict[int, EncounterInput]:
    return {enc.id: current for enc, current in encounter_inputs(session, patient_id)}


def _last(session: Session, encounter_ids: Any) -> int:
    """The id of the encounter whose export id is highest (the export's newest)."""
    return max(
        encounter_ids,
        key=lambda i: int(session.get(Encounter, i).source_ref.rsplit(":", 1)[-1]),
    )


def _latest_discharges(app: Flask) -> list[tuple[str, int, Any]]:
    """(patient public id, encounter id, features) of each multi-encounter patient's last
    encounter, when it is in the cohort."""
    out = []
    with get_state(app).sessions() as session:
        for patient in session.scalars(select(Patient).order_by(Patient.id)).all():
            inputs = _by_id(session, patient.id)
            if len(inputs) < 3:
                continue
            last_id = _last(session, inputs)
            if in_readmission_cohort(inputs[last_id].attributes):
                out.append((patient.public_id, last_id, readmission_features(inputs[last_id])))
    return out


def test_the_champion_scores_a_stored_discharge_like_its_pipeline(
    app: Flask, client: FlaskClient, creds: Credentials, stored_cohort: TrainOutcome
) -> None:
    """``POST /predict {"task": "readmission-30d", "patient_id": ...}`` scores the patient's
    latest discharge from the store: the model's own predict_proba of the training-path
    features, with the patient's history, stored against that encounter and audited."""
    model = load_model(stored_cohort.artifact_path, stored_cohort.sha256)
    discharges = _latest_discharges(app)[:8]
    assert len(discharges) == 8
    headers = creds.api_key("integration")
    for public_id, encounter_id, features in discharges:
        response = client.post(
            "/api/v1/predict",
            json={"task": "readmission-30d", "patient_id": public_id},
            headers=headers,
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["task"] == "readmission-30d"
        assert body["model_version"] == stored_cohort.version
        expected = model.predict_proba_row(
            {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in features.items()}
        )
        assert abs(body["probability"] - expected) < 1e-6
        assert body["factors"]
        with get_state(app).sessions() as session:
            stored = session.scalars(
                select(Prediction).where(Prediction.public_id == body["id"])
            ).one()
            assert (stored.task, stored.encounter_id) == ("readmission-30d", encounter_id)
            audited = session.scalars(
                select(AuditEvent.patient_id).where(
                    AuditEvent.resource == f"Prediction/{body['id']}"
                )
            ).all()
            assert audited == [public_id]


def test_the_chart_shows_the_discharge_risk_apart_from_the_stay_risk(
    app: Flask, client: FlaskClient, creds: Credentials, stored_cohort: TrainOutcome
) -> None:
    """A patient's latest discharge is scored on first view of the chart (API or page),
    stored once and audited, reused on the next view, and kept out of the stay risk and
    its history, which are icu-mortality's."""
    model = load_model(stored_cohort.artifact_path, stored_cohort.sha256)
    public_id, encounter_id, features = _latest_discharges(app)[0]
    expected = model.predict_proba_row(
        {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in features.items()}
    )
    creds.login(client, creds.user("nurse", "clinician"))
    for _ in range(2):
        detail = client.get(f"/api/v1/patients/{public_id}")
        assert detail.status_code == 200
        body = detail.get_json()
        assert body["risk"] is None  # no ICU stay: the discharge risk is not a stay risk
        readmission = body["readmission"]
        assert abs(readmission["probability"] - expected) < 1e-4
        assert readmission["model_version"] == stored_cohort.version
        assert readmission["threshold"] == pytest.approx(stored_cohort.threshold)
        assert readmission["factors"]
        page = client.get(f"/patients/{public_id}").get_data(as_text=True)
        assert "Readmission within 30 days of discharge" in page
        assert readmission["factors"][0]["label"] in page
    with get_state(app).sessions() as session:
        stored = session.scalars(
            select(Prediction).where(Prediction.encounter_id == encounter_id)
        ).all()
        assert [p.task for p in stored] == ["readmission-30d"]  # scored once, then reused
        served = session.scalars(
            select(AuditEvent.patient_id).where(
                AuditEvent.resource == f"Prediction/{stored[0].public_id}"
            )
        ).all()
        assert served == [public_id]
    stays = client.get(f"/api/v1/patients/{public_id}/predictions").get_json()
    assert stays["items"] == []
    discharges = client.get(
        f"/api/v1/patients/{public_id}/predictions?task=readmission-30d"
    ).get_json()
    assert [i["id"] for i in discharges["items"]] == [stored[0].public_id]


def test_discharges_outside_the_cohort_are_clear_errors(
    app: Flask, client: FlaskClient, creds: Credentials, stored_cohort: TrainOutcome
) -> None:
    """A death or hospice discharge is outside the task (422 saying so, nothing stored);
    the tabular task cannot score a stored patient; an unknown patient is a 404."""
    headers = creds.api_key("integration")
    with get_state(app).sessions() as session:
        ended = [
            patient.public_id
            for patient in session.scalars(select(Patient)).all()
            if (inputs := _by_id(session, patient.id))
            and not in_readmission_cohort(inputs[_last(session, inputs)].attributes)
        ]
    assert ended
    response = client.post(
        "/api/v1/predict", json={"task": "readmission-30d", "patient_id": ended[0]}, headers=headers
    )
    assert response.status_code == 422
    problem = response.get_json()
    assert "death or hospice" in str(problem)
    assert ended[0] not in str(problem)
    response = client.post(
        "/api/v1/predict", json={"task": "tabular", "patient_id": ended[0]}, headers=headers
    )
    assert response.status_code == 422
    assert "feature vectors only" in str(response.get_json())
    response = client.post(
        "/api/v1/predict",
        json={"task": "readmission-30d", "patient_id": "0" * 32},
        headers=headers,
    )
    assert response.status_code == 404
    with get_state(app).sessions() as session:
        assert not session.scalars(select(Prediction)).all()


def test_a_unit_bound_caller_cannot_score_a_patient_outside_its_units(
    app: Flask, client: FlaskClient, creds: Credentials, stored_cohort: TrainOutcome
) -> None:
    """The readmission path looks the patient up as the stay path does: a caller bound
    to a unit gets the unknown-patient 404 for a patient it may not see, and nothing is
    scored or stored."""
    public_id, _, _ = _latest_discharges(app)[0]
    token = creds.login(client, creds.user("micu.nurse", "clinician", units=["MICU"]))
    refused = client.post(
        "/api/v1/predict",
        json={"task": "readmission-30d", "patient_id": public_id},
        headers={"X-CSRF-Token": token},
    )
    detail = client.get(f"/api/v1/patients/{public_id}")
    assert refused.status_code == detail.status_code == 404
    assert refused.get_json()["error"]["message"] == "no patient with that id"
    with get_state(app).sessions() as session:
        assert not session.scalars(select(Prediction)).all()


def test_only_hospital_encounters_are_scored_or_counted(
    app: Flask, client: FlaskClient, creds: Credentials, stored_cohort: TrainOutcome
) -> None:
    """The task learnt from inpatient stays: a patient whose discharges are ICU stays gets
    no readmission risk (422 on request, none on the chart), and an ICU stay is left out
    of another patient's history."""
    public_id, encounter_id, features = _latest_discharges(app)[0]
    with session_scope(get_state(app).sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == public_id)).one()
        kept = _by_id(session, patient.id)
        earlier = [i for i in kept if i != encounter_id]
        # One earlier stay recorded as an ICU stay: the history loses one encounter.
        session.get(Encounter, earlier[0]).kind = "icu"
    with get_state(app).sessions() as session:
        now = _by_id(session, patient.id)
    assert earlier[0] not in now
    assert readmission_features(now[encounter_id])["prior_encounters"] == (
        features["prior_encounters"] - 1
    )
    with session_scope(get_state(app).sessions) as session:
        for i in kept:
            session.get(Encounter, i).kind = "icu"
    headers = creds.api_key("integration")
    response = client.post(
        "/api/v1/predict",
        json={"task": "readmission-30d", "patient_id": public_id},
        headers=headers,
    )
    assert response.status_code == 422
    assert "no discharged inpatient encounter" in str(response.get_json())
    detail = client.get(f"/api/v1/patients/{public_id}", headers=headers).get_json()
    assert detail["readmission"] is None
