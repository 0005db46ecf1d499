"""The documented restore procedure works: pg_dump -> pg_restore into a fresh database.

This is the drill in docs/deployment-guide.md ("Backup and restore"), run for real: a
database holding synthetic patients (identifiers encrypted) and a chain of audit events is
dumped in PostgreSQL's custom format, restored into another database, and the restored
copy must have the same rows, an intact audit chain ending on the same hash, and
identifiers that still decrypt with the same key.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tests.services import DatabaseFactory, libpq_args, pg_tool
from vitalcast.cli import main
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.db import create_db_engine, session_scope
from vitalcast.db.metadata import all_metadata
from vitalcast.db.session import make_session_factory
from vitalcast.ingest.service import store_batch
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.synth import generate_cohort


def _counts(session: Session) -> dict[str, int]:
    return {
        t.name: session.scalar(select(func.count()).select_from(t)) or 0
        for t in all_metadata().sorted_tables
    }


def _pg_dump(server_major: int, url: str, dump: Path) -> None:
    """The guide's backup: ``pg_dump --format=custom --no-owner``."""
    subprocess.run(
        [
            pg_tool("pg_dump", server_major),
            "--format=custom",
            "--no-owner",
            "--file",
            str(dump),
            *libpq_args(url),
        ],
        check=True,
        timeout=120,
    )


def _pg_restore(server_major: int, url: str, dump: Path) -> None:
    """The guide's restore: ``pg_restore --clean --if-exists`` in one transaction."""
    subprocess.run(
        [
            pg_tool("pg_restore", server_major),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            *libpq_args(url),
            str(dump),
        ],
        check=True,
        timeout=120,
    )


def test_pg_dump_restores_into_a_fresh_database_with_an_intact_audit_chain(
    databases: DatabaseFactory, cipher: FieldCipher, tmp_path: Path
) -> None:
    source_url, target_url = databases.new(), databases.new()
    source = create_db_engine(source_url)
    sessions = make_session_factory(source)
    batch = generate_cohort(
        n_current=3, n_historic=5, seed=7, now=datetime(2026, 1, 5, 12, tzinfo=UTC)
    )
    with session_scope(sessions) as session:
        store_batch(session, batch, source="synthetic", location="backup-test", cipher=cipher)
        for i in range(25):
            audit.record(
                session, audit.Event(f"backup.test{i}", "R", actor="user:test", details={"i": i})
            )
    with sessions() as session:
        before = _counts(session)
        head = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
        encrypted = session.scalars(select(Patient).order_by(Patient.id)).first()
        assert encrypted is not None
        server_major = int(session.scalar(text("SHOW server_version_num")) or 0) // 10000
    source.dispose()
    assert before["patients"] == 8
    assert before["audit_events"] >= 25

    dump = tmp_path / "vitalcast.dump"
    _pg_dump(server_major, source_url, dump)
    # The target was cloned from the migrated template: --clean drops its objects first,
    # as on a restore over a replacement instance that someone already migrated.
    _pg_restore(server_major, target_url, dump)

    target = create_db_engine(target_url)
    with Session(target) as session:
        assert _counts(session) == before
        check = audit.verify_chain(session)
        assert (check.ok, check.checked) == (True, before["audit_events"])
        restored_head = session.scalar(
            select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
        )
        assert restored_head == head
        patient = session.scalars(select(Patient).order_by(Patient.id)).first()
        assert patient is not None
        assert patient.public_id == encrypted.public_id
        for column in Patient.__table__.columns:
            assert getattr(patient, column.key) == getattr(encrypted, column.key), column.key
        # The restored ciphertext still opens with the same key (keys are not in the dump).
        identifiers = decrypt_identifiers(cipher, patient)
        assert identifiers == decrypt_identifiers(cipher, encrypted)
        assert identifiers, "synthetic patients carry encrypted identifiers"
    target.dispose()


def test_anchoring_after_a_restore_follows_the_documented_steps(
    databases: DatabaseFactory, settings: Settings, tmp_path: Path
) -> None:
    """Steps 5 and 8 of the restore procedure: the old anchor file holds anchors made after
    the backup, so anchoring against it keeps failing (the defect an operator who only
    "resumed the schedules" hit); it still checks the restored chain with
    --anchored-before, and a new anchor file lets anchoring resume."""
    source_url, target_url = databases.new(), databases.new()
    old_file, new_file = tmp_path / "anchors-old.jsonl", tmp_path / "anchors-new.jsonl"
    on_source = settings.model_copy(update={"database_url": source_url})
    on_target = settings.model_copy(update={"database_url": target_url})

    def cli(on: Settings, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), obj={"settings": on})
        return result.exit_code, result.stdout + result.stderr

    source = create_db_engine(source_url)
    with source.connect() as conn:
        server_major = int(conn.scalar(text("SHOW server_version_num")) or 0) // 10000
    with session_scope(make_session_factory(source)) as session:
        for i in range(3):
            audit.record(session, audit.Event(f"backup.test{i}", "R", actor="user:test"))
    assert cli(on_source, "audit", "anchor", "--file", str(old_file))[0] == 0
    backup_time = datetime.now(UTC).isoformat(timespec="seconds")
    time.sleep(1.1)  # anchors carry whole seconds
    dump = tmp_path / "vitalcast.dump"
    _pg_dump(server_major, source_url, dump)
    with session_scope(make_session_factory(source)) as session:
        audit.record(session, audit.Event("backup.after", "R", actor="user:test"))
    source.dispose()
    assert cli(on_source, "audit", "anchor", "--file", str(old_file))[0] == 0
    _pg_restore(server_major, target_url, dump)

    code, out = cli(on_target, "audit", "verify", "--anchor", str(old_file))
    assert code == 1
    assert "the anchored head is missing" in out
    code, out = cli(
        on_target, "audit", "verify", "--anchor", str(old_file), "--anchored-before", backup_time
    )
    assert code == 0, out
    assert cli(on_target, "audit", "anchor", "--file", str(old_file))[0] == 1
    code, out = cli(on_target, "audit", "anchor", "--file", str(new_file))
    assert code == 0, out
    code, out = cli(on_target, "audit", "verify", "--anchor", str(new_file))
    assert code == 0, out
    assert "anchors: 1 honoured; newest" in out
