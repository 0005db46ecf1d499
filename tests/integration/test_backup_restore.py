"""The documented restore procedure works: pg_dump -> pg_restore into a fresh database.

This is the drill in docs/deployment-guide.md ("Backup and restore"), run for real: a
database holding synthetic patients (identifiers encrypted) and a chain of audit events is
dumped in PostgreSQL's custom format, restored into another database, and the restored
copy must have the same rows, an intact audit chain ending on the same hash, and
identifiers that still decrypt with the same key.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tests.services import DatabaseFactory, libpq_args, pg_tool
from vitalcast.clinical.tables import Patient
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
    subprocess.run(
        [
            pg_tool("pg_dump", server_major),
            "--format=custom",
            "--no-owner",
            "--file",
            str(dump),
            *libpq_args(source_url),
        ],
        check=True,
        timeout=120,
    )
    # The target was cloned from the migrated template: --clean drops its objects first,
    # as on a restore over a replacement instance that someone already migrated.
    subprocess.run(
        [
            pg_tool("pg_restore", server_major),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            *libpq_args(target_url),
            str(dump),
        ],
        check=True,
        timeout=120,
    )

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
