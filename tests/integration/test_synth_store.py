"""A synthetic cohort stored into real PostgreSQL through the ingestion service."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.cli import main
from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.config import Settings
from vitalcast.db import create_db_engine
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher
from vitalcast.synth import generate_cohort, store_cohort
from vitalcast.synth.physiology import is_artefact

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _count(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def test_cohort_stored_with_artefacts_quarantined(
    db_session: Session, cipher: FieldCipher, caplog: pytest.LogCaptureFixture
) -> None:
    batch = generate_cohort(n_current=6, n_historic=10, seed=3, now=NOW)
    artefacts = sum(
        1
        for o in batch.observations
        if o.value is not None and is_artefact(BY_CODE[o.code].key, o.value)
    )
    with caplog.at_level(logging.DEBUG):
        report = store_cohort(
            session=db_session, batch=batch, cipher=cipher, now=NOW, stays_per_chunk=5
        )
    assert report.balanced()
    obs = report.kinds["observation"]
    assert (obs.received, obs.duplicates) == (len(batch.observations), 0)
    assert obs.quarantined == artefacts
    assert dict(report.reasons) == ({"implausible_value": artefacts} if artefacts else {})
    assert _count(db_session, Observation) == len(batch.observations) - artefacts
    assert _count(db_session, QuarantineItem) == artefacts
    assert (_count(db_session, Patient), _count(db_session, Encounter)) == (16, 16)
    assert _count(db_session, Outcome) == 10
    open_stays = db_session.scalar(
        select(func.count()).select_from(Encounter).where(Encounter.discharged_at.is_(None))
    )
    assert open_stays == 6
    latest = db_session.scalar(select(func.max(Observation.effective_at)))
    assert latest is not None
    assert latest <= NOW

    # Identifiers are encrypted at rest and decrypt to the generated ones.
    first = batch.patients[0]
    row = db_session.scalars(select(Patient).where(Patient.source_ref == first.ref)).one()
    assert row.mrn_hmac == cipher.mrn_hash(first.mrn or "")
    assert row.identifiers_enc is not None
    assert row.key_id is not None
    assert (first.name or "").encode() not in row.identifiers_enc
    decrypted = cipher.decrypt(row.identifiers_enc, row.key_id, context=f"patient:{row.public_id}")
    assert decrypted == first.identifiers()
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for p in batch.patients:
        for secret in p.identifiers().values():
            assert secret not in text

    # A re-run changes nothing but counts duplicates (chunks commit independently).
    again = store_cohort(session=db_session, batch=batch, cipher=cipher, now=NOW)
    assert again.kinds["observation"].stored == 0
    assert again.kinds["patient"].duplicates == 16


def test_cli_synth_into_database(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALCAST_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("VITALCAST_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("VITALCAST_ENV", "test")
    args = ["synth", "--patients", "3", "--historic", "4", "--seed", "9"]
    result = CliRunner().invoke(main, [*args, "--now", "2026-03-01T12:00"])
    assert result.exit_code == 0, result.output
    assert "synth synth seed=9: received" in result.output
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            assert _count(session, Encounter) == 7
            assert _count(session, Outcome) == 4
        # A second run adds a new cohort after the first, never onto its stays.
        again = CliRunner().invoke(main, [*args, "--now", "2026-03-02T12:00"])
        assert again.exit_code == 0, again.output
        with Session(engine) as session:
            assert _count(session, Encounter) == 14
            assert _count(session, Patient) == 14
            refs = set(session.scalars(select(Encounter.source_ref)))
            assert refs == {f"synth:{200_001 + i}" for i in range(14)}
    finally:
        engine.dispose()
    batch = generate_cohort(n_current=3, n_historic=4, seed=9, now=NOW)
    for p in batch.patients:
        for secret in p.identifiers().values():
            assert secret not in result.output
