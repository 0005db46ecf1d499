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
from vitalcast.ingest.tables import IngestRun, QuarantineItem
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


def test_time_reasons_do_not_quote_the_date_of_care(
    db_session: Session, cipher: FieldCipher
) -> None:
    """A date of care is an identifier (HIPAA Safe Harbor): the reasons a reviewer, the
    CLI and the API read name the field and the rule, never the date."""
    batch = RecordBatch(
        patients=[PatientRecord("p1", mrn="MRN-1", birth_date=BORN)],
        observations=[
            hr("p1", datetime(1999, 3, 4, 5, 6, tzinfo=UTC)),
            hr("p1", datetime(2031, 7, 8, 9, 10, tzinfo=UTC)),
        ],
    )
    report = store_batch(db_session, batch, source="fhir", location="a", cipher=cipher, now=NOW)
    db_session.commit()
    assert dict(report.reasons) == {"before_birth": 1, "future_time": 1}
    reasons = list(db_session.scalars(select(QuarantineItem.reason)))
    assert len(reasons) == 2
    for reason in reasons:
        assert not any(part in reason for part in ("1999", "2031", "03-04", "07-08")), reason


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


def test_store_batch_quarantines_unstorable_text_in_any_field_of_any_record(
    db_session: Session, cipher: FieldCipher
) -> None:
    """The rule is the store's, so every source gets it: identifiers (encrypted, yet a
    surrogate cannot even be encoded), references, attributes' keys and values. The run's
    own location (a file name decoded with surrogateescape) is stored in escaped form."""
    at = datetime(2025, 1, 1, tzinfo=UTC)
    batch = RecordBatch(
        patients=[
            PatientRecord("ok"),
            PatientRecord("named", name="Zo\udce9"),
            PatientRecord("ref\x00x", source_ref="file#ref\x00x"),
        ],
        encounters=[
            EncounterRecord("e-ok", "ok", at),
            EncounterRecord("e-attr", "ok", at, attributes={"payer\x00": "A"}),
        ],
        observations=[
            ObservationRecord("ok", "8867-4", at, 80.0, "/min", source_ref="o1"),
            ObservationRecord(
                "ok", "8867-4", at, 81.0, "/min", device_id="\ud800", source_ref="o2"
            ),
        ],
        received=7,
    )
    report = store_batch(
        db_session, batch, source="fhir", location="dir/caf\udce9.json", cipher=cipher, now=NOW
    )
    db_session.commit()
    assert report.balanced()
    assert (report.stored, report.quarantined) == (3, 4)
    assert sorted(r["reason"] for r in report.rejects) == [
        "encounter attributes contains a NUL character; it cannot be stored",
        "observation device_id contains a lone UTF-16 surrogate (U+D800 to U+DFFF), which is"
        " not Unicode text; it cannot be stored",
        "patient name contains a lone UTF-16 surrogate (U+D800 to U+DFFF), which is not Unicode"
        " text; it cannot be stored",
        "patient ref contains a NUL character; it cannot be stored",
    ]
    assert "file#ref\\u0000x" in {r["location"] for r in report.rejects}
    assert db_session.scalar(select(IngestRun.location)) == "dir/caf\\udce9.json"
    assert db_session.scalar(select(func.count()).select_from(QuarantineItem)) == 4


def test_an_mrn_with_another_birth_date_is_not_merged(
    db_session: Session, cipher: FieldCipher
) -> None:
    """A record whose MRN names a stored patient was merged into that patient whatever it
    said, so two people sharing an MRN (two assigning authorities, a mistyped number) had
    their data and risks mixed. Another birth date now quarantines it, across batches and
    within one; an agreeing or missing birth date still links."""
    admitted = datetime(2025, 5, 1, tzinfo=UTC)
    store_batch(
        db_session,
        RecordBatch(patients=[PatientRecord("fhir-1", mrn="MRN-7", birth_date=BORN)]),
        source="fhir",
        location="a",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    other = date(1951, 2, 3)
    report = store_batch(
        db_session,
        RecordBatch(
            patients=[
                PatientRecord("hl7-9", mrn="MRN-7", birth_date=other, source_ref="b:1"),
                PatientRecord("hl7-10", mrn="MRN-7", birth_date=BORN, source_ref="b:2"),
                PatientRecord("hl7-11", mrn="MRN-7", source_ref="b:3"),
                PatientRecord("hl7-20", mrn="MRN-8", birth_date=BORN, source_ref="b:4"),
                PatientRecord("hl7-21", mrn="MRN-8", birth_date=other, source_ref="b:5"),
            ],
            observations=[hr(ref, admitted) for ref in ("hl7-9", "hl7-10", "hl7-11", "hl7-21")],
        ),
        source="hl7v2",
        location="b",
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    assert report.balanced()
    patients = report.kinds["patient"]
    assert (patients.received, patients.stored, patients.duplicates) == (5, 1, 2)
    assert patients.quarantined == 2
    assert [(r["location"], r["reason_code"]) for r in report.rejects] == [
        ("b:1", "identity_conflict"),
        ("b:5", "identity_conflict"),
        # Their data cannot be attributed to anyone: quarantined too, never merged.
        ("hl7-9@2025", "unknown_patient"),
        ("hl7-21@2025", "unknown_patient"),
    ]
    assert "MRN-7" not in str(report.rejects)
    assert db_session.scalar(select(func.count()).select_from(Patient)) == 2
    stored = {
        ref: db_session.scalar(select(Patient.id).where(Patient.source_ref == ref))
        for ref in ("fhir-1", "hl7-20")
    }
    owners = sorted(db_session.scalars(select(Observation.patient_id)))
    assert owners == [stored["fhir-1"], stored["fhir-1"]]
