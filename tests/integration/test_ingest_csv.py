"""Diabetes 130 through the shipped CSV mapping profile: counts derived from the file."""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Condition, Encounter, Outcome, Patient
from vitalcast.ingest.files import ingest_csv
from vitalcast.ingest.sources.csv import load_profile, shipped_profiles
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_profile_is_shipped_and_valid() -> None:
    assert "diabetes130" in shipped_profiles()
    profile = load_profile("diabetes130")
    assert profile.read.na_values == ["?"]
    assert profile.read.keep_default_na is False


@pytest.mark.slow
@pytest.mark.shared_data
def test_diabetes130_counts(shared_data: Path, db_session: Session, cipher: FieldCipher) -> None:
    path = shared_data / "diabetes130" / "diabetic_data.csv.gz"
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    patients = {r["patient_nbr"] for r in rows}
    diag_items = [(r["encounter_id"], r[c]) for r in rows for c in ("diag_1", "diag_2", "diag_3")]
    diag_items = [d for d in diag_items if d[1] != "?"]
    readmitted_30 = sum(1 for r in rows if r["readmitted"] == "<30")
    a1c_none = sum(1 for r in rows if r["A1Cresult"] == "None")

    report = ingest_csv(db_session, path, profile="diabetes130", cipher=cipher, now=NOW)
    db_session.commit()

    assert report.balanced()
    assert report.quarantined == 0
    enc = report.kinds["encounter"]
    assert (enc.received, enc.stored) == (len(rows), len(rows))
    pat = report.kinds["patient"]
    assert (pat.received, pat.stored, pat.duplicates) == (
        len(rows),
        len(patients),
        len(rows) - len(patients),
    )
    cond = report.kinds["condition"]
    unique_diags = len(set(diag_items))
    assert (cond.received, cond.stored, cond.duplicates) == (
        len(diag_items),
        unique_diags,
        len(diag_items) - unique_diags,
    )
    assert db_session.scalar(select(func.count()).select_from(Condition)) == unique_diags
    assert db_session.scalar(select(func.count()).select_from(Patient)) == len(patients)
    positives = db_session.scalar(
        select(func.count())
        .select_from(Outcome)
        .where(Outcome.kind == "readmission_30d", Outcome.value == 1.0)
    )
    assert positives == readmitted_30
    assert db_session.scalar(select(func.count()).select_from(Outcome)) == len(rows)
    # 'None' (test not done) is a category, not a missing value.
    stored_none = db_session.scalar(
        text("SELECT count(*) FROM encounters WHERE attributes->>'A1Cresult' = 'None'")
    )
    assert stored_none == a1c_none > 0
    first = db_session.scalars(
        select(Encounter).where(Encounter.source_ref == f"diabetes130:{rows[0]['encounter_id']}")
    ).one()
    assert first.attributes is not None
    assert first.attributes["medical_specialty"] == (rows[0]["medical_specialty"])
    assert first.discharged_at is not None
    days = (first.discharged_at - first.admitted_at).days
    assert days == int(rows[0]["time_in_hospital"])

    again = ingest_csv(db_session, path, profile="diabetes130", cipher=cipher, now=NOW)
    db_session.commit()
    assert again.stored == 0
    assert again.balanced()
