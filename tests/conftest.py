"""Shared fixtures: real PostgreSQL databases, settings, the Flask app and its clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.services import (
    REQUIRE,
    DatabaseFactory,
    mqtt_broker,
    postgres_server,
    service_missing,
)
from vitalcast.config import Settings, load_settings
from vitalcast.db import create_db_engine
from vitalcast.security.crypto import FieldCipher, cipher_from_settings


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    """Factory of fresh migrated PostgreSQL databases for this test session."""
    with postgres_server() as admin_url:
        factory = DatabaseFactory(admin_url)
        try:
            factory.prepare_template()
        except Exception as exc:
            factory.admin.dispose()
            service_missing(f"PostgreSQL at {factory.admin_url.host or 'socket'} ({exc})")
        yield factory
        factory.drop_all()


@pytest.fixture
def pg_url(databases: DatabaseFactory) -> str:
    """A fresh, empty, migrated PostgreSQL database for one test."""
    return databases.new()


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


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """A real MQTT broker: CI's Mosquitto (VITALCAST_TEST_MQTT_URL) or a throwaway one."""
    with mqtt_broker() as url:
        yield url
