"""The migrations produce exactly the schema the table classes declare, on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.metadata import all_metadata


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, all_metadata()))


def test_postgres_schema_matches_tables(pg_engine: Engine) -> None:
    assert _diff(pg_engine) == []


def test_sqlite_schema_matches_tables(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    upgrade_database(engine)
    assert _diff(engine) == []
    engine.dispose()
