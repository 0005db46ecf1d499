"""The migrations produce exactly the schema the table classes declare, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.services import DatabaseFactory
from vitalcast.clinical.tables import Observation
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.db.metadata import all_metadata
from vitalcast.db.session import downgrade_database
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import parse_record
from vitalcast.security.crypto import FieldCipher


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, all_metadata()))


def test_postgres_schema_matches_tables(pg_engine: Engine) -> None:
    assert _diff(pg_engine) == []


# The audit trail's GIN index is PostgreSQL's only (``ddl_if``, migration 0013): SQLite
# neither builds it nor can reflect an expression index to compare.
@pytest.mark.filterwarnings(
    "ignore:autogenerate skipping metadata-specified expression-based index"
    " 'ix_audit_events_listed_patients':UserWarning"
)
def test_sqlite_schema_matches_tables(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    upgrade_database(engine)
    assert _diff(engine) == []
    engine.dispose()


def test_observation_keys_survive_the_0006_upgrade(
    databases: DatabaseFactory, cipher: FieldCipher
) -> None:
    """Rows stored with the old 40-digit text keys are still recognised as duplicates by
    the new 128-bit keys after 0006, on real PostgreSQL; nothing is stored twice."""
    from tests.integration.test_store_batch import NOW, RECORD

    engine = create_db_engine(databases.empty())
    try:
        # Store the record with today's code, go back to 0005 (the keys become text), and
        # make them what the code before 0006 stored: 40 hex digits of the same SHA-256.
        upgrade_database(engine, cipher=cipher)
        with Session(engine) as session:
            store_batch(
                session,
                parse_record(RECORD),
                source="physionet2012",
                location="t",
                cipher=cipher,
                now=NOW,
            )
            session.commit()
        downgrade_database(engine, "0005", cipher=cipher)
        with Session(engine) as session:
            session.execute(text("UPDATE observations SET dedup_key = dedup_key || 'c0ffee00'"))
            session.commit()
            keys = session.scalars(text("SELECT dedup_key FROM observations")).all()
            assert len(keys) == 3
            assert {len(k) for k in keys} == {40}
        upgrade_database(engine, cipher=cipher)
        assert _diff(engine) == []
        with Session(engine) as session:
            before = session.scalar(select(func.count()).select_from(Observation))
            again = store_batch(
                session,
                parse_record(RECORD),
                source="physionet2012",
                location="t",
                cipher=cipher,
                now=NOW,
            )
            session.commit()
            assert again.kinds["observation"].duplicates == 3
            assert session.scalar(select(func.count()).select_from(Observation)) == before == 3
    finally:
        engine.dispose()


def test_0009_downgrade_refuses_to_cut_long_codes(
    databases: DatabaseFactory, cipher: FieldCipher
) -> None:
    """A 36-character concept id stored after 0009 stops a downgrade with a reason naming
    the table; nothing is cut, and without long codes the downgrade goes through."""
    from tests.integration.test_store_batch import NOW, RECORD

    engine = create_db_engine(databases.empty())
    try:
        upgrade_database(engine, cipher=cipher)
        with Session(engine) as session:
            store_batch(
                session,
                parse_record(RECORD),
                source="physionet2012",
                location="t",
                cipher=cipher,
                now=NOW,
            )
            session.execute(text("UPDATE observations SET code = :c"), {"c": "1271" + "A" * 32})
            session.commit()
        with pytest.raises(RuntimeError, match="observations holds 3 codes longer than 32"):
            downgrade_database(engine, "0008", cipher=cipher)
        with Session(engine) as session:
            codes = session.scalars(text("SELECT DISTINCT code FROM observations")).all()
            assert codes == ["1271" + "A" * 32]
            session.execute(text("UPDATE observations SET code = 'HR'"))
            session.commit()
        downgrade_database(engine, "0008", cipher=cipher)
        with engine.connect() as conn:
            width = conn.scalar(
                text(
                    "SELECT character_maximum_length FROM information_schema.columns"
                    " WHERE table_name = 'observations' AND column_name = 'code'"
                )
            )
        assert width == 32
    finally:
        engine.dispose()


def test_0015_keeps_the_served_champion_of_a_task_with_two(
    databases: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A database where a race left two champions (and two challengers) of a task is
    repaired by 0015, not refused: the champion serving loaded (newest promotion) stays,
    the other is retired, the older challenger loses its alias, and each repair is logged
    naming the task and versions; then the unique indexes hold."""
    engine = create_db_engine(databases.empty())
    try:
        upgrade_database(engine, "0014")
        rows = [
            ("v-old", "champion", "2026-01-01 00:00:00"),
            ("v-new", "champion", "2026-02-01 00:00:00"),
            ("c-old", "challenger", "2026-01-15 00:00:00"),
            ("c-new", "challenger", "2026-02-15 00:00:00"),
            ("other", "champion", "2026-01-01 00:00:00"),
        ]
        with engine.begin() as conn:
            for version, alias, promoted in rows:
                conn.execute(
                    text(
                        "INSERT INTO model_versions (version, task, artifact_path, sha256,"
                        " threshold, metrics, alias, created_at, promoted_at) VALUES (:v, :t,"
                        " '/x', :s, 0.3, '{}', :a, :p, :p)"
                    ),
                    {
                        "v": version,
                        "t": "readmission-30d" if version == "other" else "icu-mortality",
                        "s": "0" * 64,
                        "a": alias,
                        "p": promoted,
                    },
                )
        with caplog.at_level("WARNING"):
            upgrade_database(engine)
        with engine.connect() as conn:
            aliases = dict(conn.execute(text("SELECT version, alias FROM model_versions")).all())
        assert aliases == {
            "v-old": "retired",
            "v-new": "champion",
            "c-old": None,
            "c-new": "challenger",
            "other": "champion",
        }
        assert "task icu-mortality had more than one champion; kept v-new" in caplog.text
        assert "task icu-mortality had more than one challenger; kept c-new" in caplog.text
        assert _diff(engine) == []
        with (
            pytest.raises(IntegrityError, match="uq_model_versions_task_champion"),
            engine.begin() as conn,
        ):
            conn.execute(text("UPDATE model_versions SET alias = 'champion'"))
        downgrade_database(engine, "0014")
        upgrade_database(engine)
    finally:
        engine.dispose()
