"""The ingestion store on real PostgreSQL: counts add up, re-runs are no-ops, rules apply."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.physionet import RecordText, parse_record
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

RECORD = RecordText(
    "set-x/1.txt",
    "Time,Parameter,Value\n"
    "00:00,RecordID,1\n00:00,Age,71\n00:00,Gender,1\n00:00,Height,-1\n"
    "00:00,ICUType,3\n00:00,Weight,80\n"
    "00:10,HR,88\n"
    "00:10,HR,0\n"  # device artefact
    "00:20,Temp,-17.8\n"  # device artefact
    "00:30,FiO2,0.5\n"  # fraction -> 50 %
    "00:40,Foo,1\n"  # not a variable
    "48:00,Lactate,2.1\n",
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_counts_add_up_and_rules_apply(db_session: Session, cipher: FieldCipher) -> None:
    batch = parse_record(RECORD)
    report = store_batch(
        db_session, batch, source="physionet2012", location="t", cipher=cipher, now=NOW
    )
    db_session.commit()
    obs = report.kinds["observation"]
    assert (obs.received, obs.stored, obs.duplicates, obs.quarantined) == (6, 3, 0, 3)
    assert report.balanced()
    assert dict(report.reasons) == {"implausible_value": 2, "unknown_parameter": 1}
    fio2 = db_session.scalar(select(Observation.value).where(Observation.code == "3150-0"))
    assert fio2 == 50.0
    enc = db_session.scalars(select(Encounter)).one()
    assert (enc.unit, enc.age_years, enc.height_cm, enc.weight_kg) == ("MICU", 71.0, None, 80.0)
    locations = set(db_session.scalars(select(QuarantineItem.location)))
    assert locations == {"set-x/1.txt:9", "set-x/1.txt:10", "set-x/1.txt:12"}


def test_reingesting_changes_nothing(db_session: Session, cipher: FieldCipher) -> None:
    store_batch(
        db_session,
        parse_record(RECORD),
        source="physionet2012",
        location="t",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    before = db_session.scalar(select(func.count()).select_from(Observation))
    again = store_batch(
        db_session,
        parse_record(RECORD),
        source="physionet2012",
        location="t",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    assert db_session.scalar(select(func.count()).select_from(Observation)) == before
    assert again.kinds["observation"].duplicates == 3
    assert again.kinds["patient"].duplicates == 1
    assert db_session.scalar(select(func.count()).select_from(Patient)) == 1
