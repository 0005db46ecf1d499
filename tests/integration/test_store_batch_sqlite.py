"""store_batch on the embedded demo database (SQLite): same counts, same idempotency."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.integration.test_store_batch import RECORD
from vitalcast.clinical.tables import Observation
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import parse_record
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_demo_database_counts_and_rerun(tmp_path: Path, cipher: FieldCipher) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    upgrade_database(engine)
    try:
        with Session(engine) as session:
            first = store_batch(
                session, parse_record(RECORD), source="physionet2012", location="t",
                cipher=cipher, now=NOW,
            )  # fmt: skip
            session.commit()
            again = store_batch(
                session, parse_record(RECORD), source="physionet2012", location="t",
                cipher=cipher, now=NOW,
            )  # fmt: skip
            session.commit()
            stored = session.scalar(select(func.count()).select_from(Observation))
            times = list(session.scalars(select(Observation.effective_at)))
    finally:
        engine.dispose()
    obs = first.kinds["observation"]
    assert (obs.received, obs.stored, obs.quarantined) == (6, 3, 3)
    assert stored == 3
    assert again.kinds["observation"].duplicates == 3
    assert again.stored == 0
    assert all(t.tzinfo is UTC for t in times)
