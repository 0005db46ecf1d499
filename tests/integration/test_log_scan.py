"""No name, MRN, birth date or contact detail reaches the logs in a realistic flow.

Known synthetic identities are ingested through the FHIR adapter (including a
malformed Patient that is quarantined), a model is trained, users sign in (one typing an
MRN into the user-name field), view the ward, open patients and ask for predictions,
and a client probes a URL holding an MRN. Every log record of the ``vitalcast`` logger
(at DEBUG, with all its extra fields) and of any other library (WARNING and up), plus
everything written to stdout/stderr, is then searched for each identifier. Error
responses are searched too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.db import create_db_engine
from vitalcast.db.session import make_session_factory, session_scope
from vitalcast.ingest.sources.fhir import SOURCE as FHIR_SOURCE
from vitalcast.ingest.sources.fhir import iter_units
from vitalcast.ingest.units import ingest_units
from vitalcast.logging import JsonFormatter
from vitalcast.modeling.service import train_and_register
from vitalcast.modeling.train import FAST_BUDGET
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state
from vitalcast.synth.cohort import generate_cohort
from vitalcast.synth.fhir import write_fhir_ndjson
from vitalcast.synth.service import store_cohort

pytestmark = pytest.mark.slow


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[_Everything]:
    handler = _Everything()
    app_logger, root = logging.getLogger("vitalcast"), logging.getLogger()
    app_logger.addHandler(handler)
    root.addHandler(handler)
    old_levels = root.level, app_logger.level
    root.setLevel(logging.WARNING)
    app_logger.setLevel(logging.DEBUG)
    yield handler
    app_logger.removeHandler(handler)
    root.removeHandler(handler)
    root.setLevel(old_levels[0])
    app_logger.setLevel(old_levels[1])


def _record_text(record: logging.LogRecord) -> str:
    fields = {k: v for k, v in vars(record).items() if k not in ("args", "msg")}
    formatted = JsonFormatter().format(record)
    return f"{record.getMessage()}\n{fields!r}\n{formatted}"


def test_identifiers_never_reach_the_logs(
    settings: Settings,
    pg_url: str,
    tmp_path: Path,
    captured: _Everything,
    capfd: pytest.CaptureFixture[str],
) -> None:
    debug = settings.model_copy(update={"log_level": "DEBUG"})
    # Training data through the store (synthetic source, with outcomes); identities also
    # through the FHIR adapter (a second cohort, plus a malformed Patient).
    batch = generate_cohort(n_current=4, n_historic=150, seed=3, now=datetime.now(UTC))
    fhir_batch = generate_cohort(n_current=8, n_historic=0, seed=4, now=datetime.now(UTC))
    needles = set()
    for p in [*batch.patients, *fhir_batch.patients]:
        needles |= {v for v in p.identifiers().values() if v}
        if p.birth_date:
            needles |= {p.birth_date.strftime("%Y%m%d"), p.birth_date.strftime("%d/%m/%Y")}
    assert len(needles) > 300

    folder = tmp_path / "fhir"  # write_fhir_ndjson fills a folder of NDJSON files
    write_fhir_ndjson(fhir_batch, folder)
    victim = fhir_batch.patients[0]
    broken = {
        "resourceType": "Patient",
        "id": "broken-1",
        "identifier": [{"value": victim.mrn}],
        "name": [{"text": victim.name}],
        "birthDate": "not-a-date " + str(victim.birth_date),
        "telecom": [{"system": "phone", "value": victim.phone}],
    }
    (folder / "broken.ndjson").write_text(json.dumps(broken) + "\n")
    # An unreadable file named after a patient, as Synthea names its files.
    named = fhir_batch.patients[1]
    assert named.name
    (folder / f"{named.name}.json").write_text("{not json")
    engine = create_db_engine(pg_url)
    sessions = make_session_factory(engine)
    cipher = cipher_from_settings(settings)
    with sessions() as session:
        store_cohort(session=session, batch=batch, cipher=cipher, now=datetime.now(UTC))
    fhir = ingest_units(
        sessions, iter_units([folder]), source=FHIR_SOURCE, location="cohort", cipher=cipher
    )
    assert any(named.name in e for e in fhir.errors)  # the run's own report names it
    with session_scope(sessions) as session:
        train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=settings.resolved_registry_dir,
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=20,
        )
    with sessions() as session:
        patient_ids = session.scalars(select(Patient.public_id).limit(3)).all()
    engine.dispose()

    app = create_app(debug)
    try:
        bodies = _browse(app, patient_ids, victim.mrn or "")
    finally:
        get_state(app).close()

    out, err = capfd.readouterr()
    texts = [_record_text(r) for r in captured.records]
    assert any("ingest run stored" in t for t in texts), "the capture saw no ingest log"
    assert any("ingest unit unreadable" in t for t in texts), "no unreadable-unit log"
    assert any('"status": 200' in t or "'status': 200" in t for t in texts), "no request log"
    haystack = "\n".join([*texts, out, err, *bodies]).lower()
    leaked = sorted(n for n in needles if n.lower() in haystack)
    assert leaked == []


def _browse(app: object, patient_ids: list[str], mrn: str) -> list[str]:
    from flask import Flask

    assert isinstance(app, Flask)
    creds = Credentials(app)
    creds.user("carla", "clinician")
    browser = app.test_client()
    page = browser.get("/login").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    typo = browser.post("/login", data={"username": mrn, "password": "x" * 12, "csrf_token": token})
    assert typo.status_code == 401
    creds.login(browser, "carla")
    assert browser.get("/ward").status_code == 200
    api = app.test_client()
    key = creds.api_key("clinician") | {"Accept": "application/json"}
    bodies = [typo.get_data(as_text=True)]
    for pid in patient_ids:
        for url in (
            f"/api/v1/patients/{pid}",
            f"/api/v1/patients/{pid}/observations",
            f"/api/v1/patients/{pid}/predictions",
            f"/fhir/Patient/{pid}",
        ):
            assert api.get(url, headers=key).status_code == 200, url
        scored = api.post("/api/v1/predict", json={"patient_id": pid}, headers=key)
        assert scored.status_code in (200, 404), scored.get_data(as_text=True)
    assert api.get("/api/v1/patients", headers=key).status_code == 200
    for probe in (
        api.get(f"/api/v1/patients/{mrn}", headers=key),
        api.post("/api/v1/predict", json={"patient_id": mrn}, headers=key),
        api.get(f"/fhir/Patient/{mrn}", headers=key),
    ):
        assert probe.status_code == 404
        bodies.append(probe.get_data(as_text=True))
    return bodies
