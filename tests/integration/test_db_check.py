"""`vitalcast db check` finds the references the observation table does not enforce."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlalchemy.orm import Session

from tests.integration.test_store_batch import NOW, RECORD
from vitalcast.cli import main
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import parse_record
from vitalcast.security.crypto import FieldCipher


def test_db_check_passes_after_ingest_and_flags_an_orphan(
    db_session: Session, cipher: FieldCipher, pg_url: str, tmp_path: Path
) -> None:
    store_batch(
        db_session,
        parse_record(RECORD),
        source="physionet2012",
        location="t",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}
    clean = CliRunner().invoke(main, ["db", "check"], env=env)
    assert clean.exit_code == 0, clean.output
    assert "observations without their patient: 0" in clean.output

    # An observation whose encounter is gone (written behind the ingestion service's back).
    db_session.connection().exec_driver_sql(
        "UPDATE observations SET encounter_id = encounter_id + 1000 WHERE code = '8867-4'"
    )
    db_session.commit()
    broken = CliRunner().invoke(main, ["db", "check"], env=env)
    assert broken.exit_code == 1
    assert "observations without their encounter: 1" in broken.output
