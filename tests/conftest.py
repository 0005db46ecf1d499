"""Shared fixtures: real PostgreSQL databases, settings, the Flask app and its clients."""

from __future__ import annotations

import gc
import os
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.modeling_data import register_champion
from tests.services import (
    REQUIRE,
    TEST_AUDIT_KEY,
    DatabaseFactory,
    mqtt_broker,
    postgres_server,
    service_missing,
)
from tests.tabular_data import heart_task_files
from vitalcast.config import Settings, load_settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.session import make_session_factory
from vitalcast.errors import ConfigError
from vitalcast.ingest.mllp import MessageHandler, MllpServer
from vitalcast.security import audit_keys
from vitalcast.security.audit_keys import AuditKeyring
from vitalcast.security.crypto import FieldCipher, cipher_from_settings
from vitalcast.security.service import create_api_key, create_user
from vitalcast.security.sessions import SESSION_KEY, token_digest
from vitalcast.security.tables import WebSession
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state


@pytest.fixture(scope="session", autouse=True)
def audit_keyring() -> Iterator[AuditKeyring]:
    """The audit key of the whole test session, supplied through the environment as in
    production: settings that tests build, CLI runs and child processes then all chain
    with the key that events written straight through a session use."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VITALCAST_AUDIT_KEY", TEST_AUDIT_KEY)
        keyring = AuditKeyring.from_string(TEST_AUDIT_KEY)
        audit_keys.install(keyring)
        yield keyring


@pytest.fixture(autouse=True)
def _restore_audit_keyring(audit_keyring: AuditKeyring) -> Iterator[None]:
    """A test that installs another keyring (an app or CLI run with other settings, a
    rotation test) leaves the session's one behind for the next test."""
    yield
    audit_keys.install(audit_keyring)


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    """Factory of fresh migrated PostgreSQL databases for this test session."""
    with postgres_server() as admin_url:
        factory = DatabaseFactory(admin_url)
        try:
            factory.prepare_template()
        except (OperationalError, ConfigError) as exc:  # unreachable; a migration bug raises
            factory.admin.dispose()
            service_missing(f"PostgreSQL at {factory.admin_url.host or 'socket'} ({exc})")
        yield factory
        factory.drop_all()


@pytest.fixture
def pg_url(databases: DatabaseFactory) -> str:
    """An empty, migrated PostgreSQL database for one test."""
    return databases.clean()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_db_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(pg_engine: Engine) -> Iterator[Session]:
    """A session on a fresh database; the test decides when to commit."""
    with Session(pg_engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    """Test settings on a fresh PostgreSQL database and a private data directory."""
    return load_settings(env="test", data_dir=tmp_path / "var", database_url=pg_url, log_json=True)


@pytest.fixture
def cipher(settings: Settings) -> FieldCipher:
    return cipher_from_settings(settings)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets (../shared/data). Skips locally without them, fails in CI."""
    value = os.environ.get("VITALCAST_SHARED_DATA")
    if value and Path(value).is_dir():
        return Path(value)
    if value or REQUIRE:
        pytest.fail(f"VITALCAST_SHARED_DATA={value!r} is not a folder")
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    if default.is_dir():
        return default
    pytest.skip("real data sets not available (set VITALCAST_SHARED_DATA)")


@pytest.fixture
def small_set(shared_data: Path, tmp_path: Path) -> Path:
    """A .tar.gz of the first 10 records of PhysioNet 2012 set A."""
    out = tmp_path / "small.tar.gz"
    with (
        tarfile.open(shared_data / "physionet2012" / "set-a.tar.gz") as src,
        tarfile.open(out, "w:gz") as dst,
    ):
        members = [m for m in src.getmembers() if m.isfile()][:10]
        for m in members:
            dst.addfile(m, src.extractfile(m))
    return out


@pytest.fixture
def mllp_server(pg_engine: Engine, cipher: FieldCipher) -> Iterator[MllpServer]:
    """An HL7 v2 MLLP listener on a free loopback port, storing into the test database."""
    srv = MllpServer(("127.0.0.1", 0), MessageHandler(make_session_factory(pg_engine), cipher))
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The real app on a fresh PostgreSQL database."""
    application = create_app(settings)
    yield application
    get_state(application).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Credentials:
    """Creates users and API keys in the app's database and signs clients in."""

    PASSWORD = "correct horse battery"

    def __init__(self, app: Flask) -> None:
        self.app = app

    def user(self, username: str, role: str, units: list[str] | None = None) -> str:
        with session_scope(get_state(self.app).sessions) as session:
            create_user(session, username=username, password=self.PASSWORD, role=role, units=units)
        return username

    def api_key(self, role: str) -> dict[str, str]:
        with session_scope(get_state(self.app).sessions) as session:
            _, key = create_api_key(session, name=f"test-{role}", role=role)
        return {"Authorization": f"Bearer {key}"}

    def login(self, client: FlaskClient, username: str, password: str | None = None) -> str:
        """Sign ``client`` in through the real form; returns the session's CSRF token."""
        page = client.get("/login")
        token = _csrf_from(page.get_data(as_text=True))
        response = client.post(
            "/login",
            data={"username": username, "password": password or self.PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 302, response.get_data(as_text=True)
        return _csrf_from(client.get("/ward").get_data(as_text=True))


def web_session_id(client: FlaskClient) -> str:
    """The stored id of ``client``'s server-side session (the digest of its cookie token)."""
    with client.session_transaction() as cookie:
        return token_digest(cookie[SESSION_KEY])


def web_session(client: FlaskClient) -> WebSession:
    """``client``'s server-side session row, as stored now."""
    with get_state(client.application).sessions() as session:
        row = session.get(WebSession, web_session_id(client))
    assert row is not None, "the client has no server-side session"
    return row


def set_web_session(client: FlaskClient, **times: datetime) -> None:
    """Move ``client``'s stored session times (``created_at``, ``last_seen_at``): how the
    tests make a session idle or old without waiting."""
    with session_scope(get_state(client.application).sessions) as session:
        row = session.get(WebSession, web_session_id(client))
        assert row is not None, "the client has no server-side session"
        for name, value in times.items():
            setattr(row, name, value)


def _csrf_from(html: str) -> str:
    import re

    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


@pytest.fixture
def creds(app: Flask) -> Credentials:
    return Credentials(app)


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """A real MQTT broker: CI's Mosquitto (VITALCAST_TEST_MQTT_URL) or a throwaway one."""
    with mqtt_broker() as url:
        yield url


@pytest.fixture(scope="session")
def trained_model(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An icu-mortality model trained once per session on a small synthetic cohort."""
    from vitalcast.db.session import make_session_factory
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import FAST_BUDGET
    from vitalcast.synth import generate_cohort, store_cohort

    home = tmp_path_factory.mktemp("trained")
    settings = load_settings(env="test", data_dir=home, database_url=databases.new())
    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    batch = generate_cohort(n_current=0, n_historic=400, seed=11, now=MODEL_NOW)
    with sessions() as session:
        store_cohort(
            session=session, batch=batch, cipher=cipher_from_settings(settings), now=MODEL_NOW
        )
    with session_scope(sessions) as session:
        outcome = train_and_register(
            "icu-mortality",
            session=session,
            registry_dir=home / "registry",
            budget=FAST_BUDGET,
            n_splits=3,
            n_boot=20,
        )
    engine.dispose()
    return outcome


@pytest.fixture
def champion(pg_engine: Engine, trained_model: Any) -> None:
    """``trained_model`` registered as the champion in the test's database."""
    from vitalcast.db.session import make_session_factory

    with session_scope(make_session_factory(pg_engine)) as s:
        register_champion(s, trained_model)


@pytest.fixture(scope="session")
def trained_tabular(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A `tabular` model trained once per session on the UCI Cleveland table (303 rows)."""
    from vitalcast.modeling.service import train_and_register
    from vitalcast.modeling.train import FAST_BUDGET

    home = tmp_path_factory.mktemp("tabular")
    task_file, csv = heart_task_files(shared_data, home)
    return train_and_register(
        "tabular",
        session=None,
        registry_dir=home / "registry",
        task_file=task_file,
        data=csv,
        budget=FAST_BUDGET,
        n_boot=20,
    )


MODEL_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ward(app: Flask, trained_model: Any) -> list[str]:
    """The app with the trained model as champion and 25 current stays stored and scored.

    Returns the patients' public ids.
    """
    from vitalcast.clinical.tables import Patient
    from vitalcast.serving.models import refresh_models
    from vitalcast.serving.rescoring import rescore_stays_in_progress
    from vitalcast.synth import generate_cohort, store_cohort

    state = get_state(app)
    now = datetime.now(UTC)
    with session_scope(state.sessions) as session:
        register_champion(session, trained_model)
    refresh_models(state)
    assert state.predictor is not None
    batch = generate_cohort(n_current=25, n_historic=0, seed=5, now=now)
    with state.sessions() as session:
        store_cohort(session=session, batch=batch, cipher=state.cipher, now=now)
    rescore_stays_in_progress(state.sessions, state.predictor, as_of=now)
    with state.sessions() as session:
        return list(session.scalars(select(Patient.public_id)))


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """An app built by one test configures logging; no later test may inherit it (a CLI
    test would then find JSON log lines in the command's own output)."""
    yield
    from vitalcast.logging import reset_logging

    reset_logging()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after every test, so that an unclosed connection is reported by the test
    that leaked it (as a ResourceWarning, an error here), not by whichever test the
    garbage collector happens to run in later."""
    yield
    gc.collect()
