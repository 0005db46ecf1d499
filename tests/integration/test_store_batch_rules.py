"""store_batch rules that span batches: birth dates (decrypted), MRN links, discharges."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    PatientRecord,
    RecordBatch,
)
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BORN = date(2000, 6, 1)


def hr(ref: str, at: datetime) -> ObservationRecord:
    return ObservationRecord(ref, "8867-4", at, 80.0, "/min", source_ref=f"{ref}@{at:%Y}")


def test_before_birth_in_batch_and_from_store(db_session: Session, cipher: FieldCipher) -> None:
    first = RecordBatch(
        patients=[PatientRecord("p1", mrn="MRN-1", birth_date=BORN)],
        observations=[hr("p1", datetime(1999, 1, 1, tzinfo=UTC)), hr("p1", NOW)],
    )
    report = store_batch(db_session, first, source="fhir", location="a", cipher=cipher, now=NOW)
    assert dict(report.reasons) == {"before_birth": 1}
    db_session.commit()
    # A later batch knows the patient only from the store: the birth date is decrypted.
    later = RecordBatch(observations=[hr("p1", datetime(1998, 1, 1, tzinfo=UTC))])
    report = store_batch(db_session, later, source="fhir", location="b", cipher=cipher, now=NOW)
    assert dict(report.reasons) == {"before_birth": 1}
    assert report.balanced()


def test_mrn_links_sources_and_discharge_completes(
    db_session: Session, cipher: FieldCipher
) -> None:
    admitted = datetime(2025, 5, 1, tzinfo=UTC)
    store_batch(
        db_session,
        RecordBatch(
            patients=[PatientRecord("fhir-1", mrn="mrn-7")],
            encounters=[EncounterRecord("e1", "fhir-1", admitted)],
        ),
        source="fhir",
        location="a",
        cipher=cipher,
        now=NOW,
    )
    report = store_batch(
        db_session,
        RecordBatch(
            patients=[PatientRecord("hl7-9", mrn=" MRN-7 "), PatientRecord("hl7-10", mrn="MRN-7")],
            observations=[hr("hl7-9", admitted), hr("hl7-10", admitted)],
        ),
        source="hl7v2",
        location="b",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    assert report.kinds["patient"].duplicates == 2
    assert db_session.scalar(select(func.count()).select_from(Patient)) == 1
    owners = set(db_session.scalars(select(Observation.patient_id)))
    assert len(owners) == 1
    # Same encounter again with a discharge time: a duplicate that completes the stay.
    discharged = datetime(2025, 5, 3, tzinfo=UTC)
    again = store_batch(
        db_session,
        RecordBatch(encounters=[EncounterRecord("e1", "fhir-1", admitted, discharged)]),
        source="fhir",
        location="c",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    assert again.kinds["encounter"].duplicates == 1
    assert db_session.scalar(select(Encounter.discharged_at)) == discharged


def test_a_quarantined_item_keeps_its_whole_code(db_session: Session, cipher: FieldCipher) -> None:
    # Codes up to 64 characters are stored (migration 0009); a quarantined item's code,
    # which the admin page filters on, must not be cut either.
    long_code = "urn:local:" + "x" * 40  # 50 characters, not in the vocabulary
    batch = RecordBatch(
        patients=[PatientRecord("p1")],
        observations=[ObservationRecord("p1", long_code, NOW, 1.0, "1", source_ref="p1-obs")],
    )
    report = store_batch(db_session, batch, source="fhir", location="a", cipher=cipher, now=NOW)
    db_session.commit()
    assert dict(report.reasons) == {"unknown_code": 1}
    assert db_session.scalars(select(QuarantineItem.code)).all() == [long_code]
