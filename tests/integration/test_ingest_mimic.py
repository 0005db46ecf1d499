"""MIMIC-IV demo 2.2 into PostgreSQL: every row of the used tables is accounted for."""

from __future__ import annotations

import csv
import gzip
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.unit.features.test_stay import MIMIC_UNIT_TYPES
from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.features import stay_features
from vitalcast.ingest.files import ingest_mimic_iv
from vitalcast.ingest.sources.mimic import LAB_ITEMS
from vitalcast.modeling.datasets import load_stays_from_db
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


@pytest.mark.shared_data
def test_demo_icu_stays_get_the_icu_type_of_their_unit(
    shared_data: Path, db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    """Every ICU stay of the demo was on a unit MIMIC-IV names in words ("Medical
    Intensive Care Unit (MICU)"), so all had the four ICU-type features 0: none of the
    PhysioNet 2012 types the model learnt. Read back from the store as training and
    serving read stays, each now has its unit's ICU type (unknown where the name says
    none), and the stored unit name is MIMIC's own."""
    folder = tmp_path / "export"
    for module, name in (("hosp", "patients"), ("hosp", "admissions"), ("icu", "icustays")):
        (folder / module).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "mimic-iv-demo-2.2" / module / f"{name}.csv.gz", folder / module)
    stays = read(folder / "icu", "icustays")
    assert {s["first_careunit"] for s in stays} == set(MIMIC_UNIT_TYPES)

    ingest_mimic_iv(db_session, folder, cipher=cipher, now=NOW)
    db_session.commit()

    stored = db_session.execute(
        select(Encounter.id, Encounter.unit).where(Encounter.kind == "icu")
    ).all()
    assert sorted(unit for _id, unit in stored) == sorted(s["first_careunit"] for s in stays)
    inputs, _labels, _groups, _ends = load_stays_from_db(db_session, "in_hospital_death")
    typed = 0
    for encounter_id, unit in stored:
        stay = inputs[str(encounter_id)]
        flags = stay_features(stay, stay.admitted_at + timedelta(hours=24))
        kind = MIMIC_UNIT_TYPES[unit]
        for name in ("CCU", "CSRU", "MICU", "SICU"):
            value = flags[f"unit_{name.lower()}"]
            if kind is None:
                assert value != value, (unit, name)  # NaN: unknown, as a stay without a unit
            else:
                assert value == float(kind == name), (unit, name)
        typed += kind is not None
    assert typed == sum(1 for s in stays if MIMIC_UNIT_TYPES[s["first_careunit"]] is not None)
    assert typed > 100  # most demo stays are on one of the four types
