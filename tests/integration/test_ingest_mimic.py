"""MIMIC-IV demo 2.2 into PostgreSQL: every row of the used tables is accounted for."""

from __future__ import annotations

import csv
import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.ingest.files import ingest_mimic_iv
from vitalcast.ingest.sources.mimic import LAB_ITEMS
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def read(folder: Path, name: str) -> list[dict[str, str]]:
    with gzip.open(folder / f"{name}.csv.gz", "rt", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.shared_data
def test_demo_counts(shared_data: Path, db_session: Session, cipher: FieldCipher) -> None:
    folder = shared_data / "mimic-iv-demo-2.2"
    assert not (folder / "icu" / "chartevents.csv.gz").exists()  # absent; not required
    admissions = read(folder / "hosp", "admissions")
    stays = read(folder / "icu", "icustays")
    transfers = read(folder / "hosp", "transfers")
    labs = read(folder / "hosp", "labevents")
    diagnoses = read(folder / "hosp", "diagnoses_icd")
    ed_only = sum(1 for t in transfers if not t["hadm_id"])
    unmapped = sum(1 for r in labs if r["itemid"] not in LAB_ITEMS)
    non_numeric = sum(1 for r in labs if r["itemid"] in LAB_ITEMS and not r["valuenum"])
    deaths = {a["hadm_id"] for a in admissions if a["hospital_expire_flag"] == "1"}

    report = ingest_mimic_iv(db_session, folder, cipher=cipher, now=NOW)
    db_session.commit()

    assert report.balanced()
    assert report.kinds["patient"].stored == 100
    kinds = dict(
        db_session.execute(select(Encounter.kind, func.count()).group_by(Encounter.kind)).all()
    )
    assert kinds == {"inpatient": len(admissions), "icu": len(stays), "emergency": ed_only}
    assert len(admissions) == 275
    obs = report.kinds["observation"]
    assert obs.received == len(labs)
    assert report.reasons["unmapped_item"] == unmapped
    assert report.reasons["non_numeric_value"] == non_numeric
    assert db_session.scalar(select(func.count()).select_from(Observation)) == obs.stored
    assert obs.stored + obs.duplicates == len(labs) - obs.quarantined
    assert report.kinds["condition"].received == len(diagnoses)
    died = db_session.scalar(
        select(func.count())
        .select_from(Outcome)
        .join(Encounter, Outcome.encounter_id == Encounter.id)
        .where(Encounter.kind == "inpatient", Outcome.value == 1.0)
    )
    assert died == len(deaths)
    icu_deaths = sum(1 for s in stays if s["hadm_id"] in deaths)
    assert report.kinds["outcome"].stored == len(admissions) + len(stays)
    icu_died = db_session.scalar(
        select(func.count())
        .select_from(Outcome)
        .join(Encounter, Outcome.encounter_id == Encounter.id)
        .where(Encounter.kind == "icu", Outcome.value == 1.0)
    )
    assert icu_died == icu_deaths
    # De-identification shift undone to the real era: nothing lies in the future.
    latest = db_session.scalar(select(func.max(Observation.effective_at)))
    assert latest is not None
    assert latest < NOW
    assert db_session.scalar(select(func.count()).select_from(Patient)) == 100


@pytest.mark.shared_data
def test_a_bad_time_quarantines_its_row_and_the_import_goes_on(
    shared_data: Path, db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    """A malformed admission time, and one whose year (after the date shift is undone)
    is outside 1800-2200, each quarantine their own row with a reason; the other 273
    admissions are stored. Before, the first one stopped the import with a traceback."""
    folder = tmp_path / "export"
    shutil.copytree(shared_data / "mimic-iv-demo-2.2", folder)
    path = folder / "hosp" / "admissions.csv.gz"
    admissions = read(folder / "hosp", "admissions")
    admissions[0]["admittime"] = "not a time 10004235"
    admissions[1]["dischtime"] = "9999-12-31 23:59:00"
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(admissions[0]))
        writer.writeheader()
        writer.writerows(admissions)

    report = ingest_mimic_iv(db_session, folder, cipher=cipher, now=NOW)
    db_session.commit()

    assert report.balanced()
    rejects = {r["location"]: (r["reason_code"], r["reason"]) for r in report.rejects}
    assert rejects["hosp/admissions.csv.gz:2"] == (
        "invalid_time",
        "admittime is not an ISO 8601 date-time",
    )
    code, reason = rejects["hosp/admissions.csv.gz:3"]
    assert code == "time_out_of_range"
    assert reason.startswith("dischtime: year ")
    assert reason.endswith(" is outside the accepted range 1800-2200")
    inpatient = db_session.scalar(
        select(func.count()).select_from(Encounter).where(Encounter.kind == "inpatient")
    )
    assert inpatient == len(admissions) - 2
