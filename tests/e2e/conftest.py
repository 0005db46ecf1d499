"""End-to-end fixtures: a real vitalcast server process, real data and a real Chromium.

The server is ``vitalcast serve`` (gunicorn, two workers) on a free loopback port against
a fresh PostgreSQL database that holds a synthetic cohort stored by ``vitalcast synth``,
a model trained by ``vitalcast train`` and a 24 h risk history scored by that model. The
browser is Debian's Chromium driven by Playwright (Playwright's own browser download is
not used). A dead server fails the test with its output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.services import DatabaseFactory, service_missing
from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.config import Settings, load_settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.service import create_api_key, create_user

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "command -v chromium || (apt-get update -qq && apt-get install -y -qq chromium)"
PASSWORD = "correct horse battery"
CURRENT_STAYS = 24
HISTORIC_STAYS = 200
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Server:
    url: str
    settings: Settings
    api_key: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "vitalcast"), *args], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"vitalcast {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _train(settings: Settings) -> None:
    """Train and register the champion with the real training code, on a small budget.

    In process rather than through ``vitalcast train`` only to cut the bootstrap and fold
    counts, which set the precision of the report's intervals, not what is served.
    """
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import FAST_BUDGET

    engine = create_db_engine(settings.resolved_database_url)
    with session_scope(make_session_factory(engine)) as session:
        outcome = train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=settings.resolved_registry_dir,
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=20,
        )
    engine.dispose()
    assert outcome.version


def _backfill_scores(settings: Settings, only: Collection[str] | None = None) -> int:
    """Score every open stay (or those whose source reference is in ``only``) with the
    champion every 4 h of the last day (as of then)."""
    from sqlalchemy import select

    from vitalcast.clinical.tables import Encounter
    from vitalcast.serving.predictor import load_champion
    from vitalcast.serving.scoring import score_encounter
    from vitalcast.serving.state import AppState

    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    state = AppState(
        settings=settings, engine=engine, sessions=sessions, cipher=cipher_from_settings(settings)
    )
    predictor = load_champion(state)
    assert predictor is not None, "vitalcast train registered no champion"
    now = datetime.now(UTC)
    n = 0
    with session_scope(sessions) as session:
        open_stays = select(Encounter).where(Encounter.discharged_at.is_(None))
        if only is not None:
            open_stays = open_stays.where(Encounter.source_ref.in_(list(only)))
        for enc in session.scalars(open_stays):
            for hours_ago in range(24, -1, -4):
                as_of = now - timedelta(hours=hours_ago)
                if as_of >= enc.admitted_at:
                    score_encounter(session, predictor, enc, as_of=as_of)
                    n += 1
    engine.dispose()
    return n


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        service_missing(f"Chromium at {CHROMIUM} (install it: {INSTALL_HINT})")
    return CHROMIUM


@pytest.fixture(scope="session")
def server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real server with data, a trained champion, users and an integration key."""
    data_dir = tmp_path_factory.mktemp("e2e") / "var"
    url = databases.new()
    port = _free_port()
    env = {
        **os.environ,
        "VITALCAST_ENV": "test",
        "VITALCAST_DATA_DIR": str(data_dir),
        "VITALCAST_DATABASE_URL": url,
        "VITALCAST_LOG_JSON": "false",
        "VITALCAST_STALE_AFTER_MINUTES": "120",
        # Every journey signs in, some twice, all from 127.0.0.1: the default 10/minute
        # would answer 429 to a fast run (the limit itself is tested in integration).
        "VITALCAST_RATE_LIMIT_LOGIN": "120/minute",
    }
    env.pop("VITALCAST_REDIS_URL", None)
    settings = load_settings(
        env="test", data_dir=data_dir, database_url=url, log_json=False, stale_after_minutes=120
    )
    _run(["synth", "--patients", str(CURRENT_STAYS), "--historic", str(HISTORIC_STAYS)], env)
    _train(settings)
    _backfill_scores(settings)
    engine = create_db_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        for name, role in (("carla", "clinician"), ("adam", "admin"), ("dana", "data_scientist")):
            create_user(session, username=name, password=PASSWORD, role=role)
        _, key = create_api_key(session, name="e2e-integration", role="integration")
    engine.dispose()
    log = data_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "vitalcast"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, log)
        yield Server(base, settings, key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vitalcast serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(base + "/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    pytest.fail(f"server not ready after 90 s ({last}):\n{log.read_text()}")


# The chart patient's measurements, in hours before "now": each variable on a known rhythm
# with one known gap, so that the charts' drawing rules (web/charting.py) can be checked.
CHART_STAY_HOURS = 72
CHART_HOURS: dict[str, list[tuple[float, float]]] = {
    # hourly, then 12 h without a value (over the 6 h gap limit), then hourly again
    "hr": [(h, 80.0 + h % 7) for h in range(70, 49, -1)] + [(h, 90.0) for h in range(38, 1, -1)],
    # on every 4 h, then off: one held state, one step down
    "mech_vent": [(70, 1.0), (66, 1.0), (62, 1.0), (58, 1.0), (54, 1.0), (50, 0.0), (46, 0.0)],
    # oxygen set at 60 %, turned down twice, charted every 4 h while it held
    "fio2": [(70, 60.0), (66, 60.0), (62, 40.0), (58, 40.0), (54, 30.0)],
    # hourly collections, one 2 h interval, an anuric hour, then 24 h without one
    "urine": [
        *[(70, 60.0), (69, 50.0), (68, 40.0), (67, 45.0), (65, 90.0), (64, 0.0)],
        *[(40, 70.0), (39, 55.0)],
    ],
    # 6 h apart, then 56 h without one (over the 48 h gap limit)
    "creatinine": [(70, 1.1), (64, 1.3), (8, 2.0), (2, 2.4)],
}


def _one_stay(
    ref: str,
    person: PatientRecord,
    *,
    admitted_at: datetime,
    discharged_at: datetime | None = None,
    age_years: float,
    values: Iterable[tuple[str, datetime, float]],
) -> RecordBatch:
    """A batch of one person's MICU stay with its (variable key, time, value) values."""
    from vitalcast.clinical.codes import BY_KEY
    from vitalcast.clinical.records import EncounterRecord, ObservationRecord

    return RecordBatch(
        patients=[person],
        encounters=[
            EncounterRecord(
                ref=ref,
                patient_ref=person.ref,
                admitted_at=admitted_at,
                discharged_at=discharged_at,
                unit="MICU",
                age_years=age_years,
            )
        ],
        observations=[
            ObservationRecord(
                patient_ref=person.ref,
                encounter_ref=ref,
                code=BY_KEY[key].code,
                unit=BY_KEY[key].unit,
                effective_at=at,
                value=value,
            )
            for key, at, value in values
        ],
    )


@pytest.fixture(scope="session")
def chart_patient(server: Server) -> str:
    """The public id of a discharged stay charted as CHART_HOURS says (not on the ward)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ref = "e2e-chart-patient"
    batch = _one_stay(
        ref,
        PatientRecord(ref=ref, sex="female", name="Charta Probe", mrn="E2E-0001"),
        admitted_at=now - timedelta(hours=CHART_STAY_HOURS),
        discharged_at=now - timedelta(minutes=30),
        age_years=64,
        values=[
            (key, now - timedelta(hours=hours), value)
            for key, points in CHART_HOURS.items()
            for hours, value in points
        ],
    )
    return _store(server, batch, "chart-patient", now)[ref]


@pytest.fixture(scope="session")
def outside_stays(server: Server) -> dict[str, str]:
    """Two encounters in progress that the stay model does not score, with a heart rate
    each: an adult's outpatient visit and a 9-year-old's ICU stay. Public ids by role."""
    from vitalcast.clinical.codes import BY_KEY
    from vitalcast.clinical.records import EncounterRecord, ObservationRecord

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    people = {"clinic": ("outpatient", 52, "Olga Outpatient"), "child": ("icu", 9, "Kim Child")}
    batch = RecordBatch()
    for role, (kind, age, name) in people.items():
        ref = f"e2e-outside-{role}"
        batch.patients.append(PatientRecord(ref=ref, sex="female", name=name, mrn=ref))
        batch.encounters.append(
            EncounterRecord(
                ref=ref,
                patient_ref=ref,
                admitted_at=now - timedelta(hours=5),
                unit="MICU",
                kind=kind,
                age_years=age,
            )
        )
        batch.observations.append(
            ObservationRecord(
                patient_ref=ref,
                encounter_ref=ref,
                code=BY_KEY["hr"].code,
                unit=BY_KEY["hr"].unit,
                effective_at=now - timedelta(minutes=20),
                value=104.0,
            )
        )
    stored = _store(server, batch, "outside-stays", now)
    return {role: stored[f"e2e-outside-{role}"] for role in people}


@pytest.fixture(scope="session")
def sparse_stay(server: Server) -> str:
    """The public id of a scored stay admitted 3 h ago with one temperature only: its
    ward row names nearly every key input as missing, the longest badge a row shows."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ref = "e2e-sparse-stay"
    batch = _one_stay(
        ref,
        PatientRecord(ref=ref, sex="male", name="Sam Sparse", mrn=ref),
        admitted_at=now - timedelta(hours=3),
        age_years=58,
        values=[("temp", now - timedelta(minutes=30), 38.4)],
    )
    public_id = _store(server, batch, "sparse-stay", now)[ref]
    assert _backfill_scores(server.settings, only=[ref])
    return public_id


def _store(server: Server, batch: RecordBatch, location: str, now: datetime) -> dict[str, str]:
    """Store ``batch`` in the server's database as ingestion does (nothing may be
    refused); its patients' public ids by their reference."""
    from sqlalchemy import select

    from vitalcast.clinical.tables import Patient
    from vitalcast.ingest.service import store_batch

    engine = create_db_engine(server.settings.resolved_database_url)
    with session_scope(make_session_factory(engine)) as session:
        report = store_batch(
            session,
            batch,
            source="e2e",
            location=location,
            cipher=cipher_from_settings(server.settings),
            now=now,
        )
        assert not report.rejects, report.rejects
        refs = [p.ref for p in batch.patients]
        found = dict(
            session.execute(
                select(Patient.source_ref, Patient.public_id).where(Patient.source_ref.in_(refs))
            ).all()
        )
    engine.dispose()
    return found


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(
        base_url=server.url,
        viewport={"width": 1366, "height": 900},
        locale="en-GB",
        timezone_id="UTC",
    )
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Status codes are asserted by the tests; any other console error (a script error, a
    # CSP violation) fails the test.
    tab.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield tab
    context.close()
    # A script error or a CSP violation on any page is a failure, not noise.
    assert not errors, errors


def sign_in(page: Page, username: str) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/ward")


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / name), full_page=full_page)


@pytest.fixture(scope="session")
def readmission_patient(
    server: Server, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The public id of a Diabetes 130 patient with several encounters, ingested into the
    server's database through the CSV adapter, with a readmission-30d champion trained on
    a sample of the real file (the first 6,000 encounters and every encounter of 120
    patients with four or more; small budget) for the server's watcher to load."""
    from sqlalchemy import select

    from tests.diabetes_data import diabetes_sample
    from vitalcast.clinical.tables import Patient
    from vitalcast.ingest.files import ingest_csv
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.tabular import load_readmission
    from vitalcast.modeling.train import FAST_BUDGET
    from vitalcast.serving.encounter_scoring import OutsideCohort, latest_discharge

    sample = tmp_path_factory.mktemp("d130-e2e") / "diabetic_sample.csv"
    chosen = diabetes_sample(shared_data, sample, multi=120, min_encounters=4, head=6000)
    # The data set's code table beside the sample names coded values (dispositions).
    mapping = shared_data / "diabetes130" / "IDs_mapping.csv"
    (sample.parent / mapping.name).write_bytes(mapping.read_bytes())
    engine = create_db_engine(server.settings.resolved_database_url)
    with session_scope(make_session_factory(engine)) as session:
        report = ingest_csv(
            session, sample, profile="diabetes130", cipher=cipher_from_settings(server.settings)
        )
        assert report.balanced()
        train_and_register(
            "readmission-30d",
            session=session,
            registry_dir=server.settings.resolved_registry_dir,
            dataset=load_readmission(sample),
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=0,
        )
    with session_scope(make_session_factory(engine)) as session:
        for patient in session.scalars(
            select(Patient)
            .where(Patient.source_ref.in_([f"diabetes130:{n}" for n in sorted(chosen)]))
            .order_by(Patient.id)
        ):
            try:
                latest_discharge(session, patient.id)
            except OutsideCohort:
                continue
            public_id: str = patient.public_id
            break
    engine.dispose()
    return public_id
