"""DICOM headers from the files pydicom ships: studies attached by MRN hash or quarantined."""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pydicom.data
import pydicom.uid
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import PatientRecord, RecordBatch
from vitalcast.clinical.tables import ImagingStudy
from vitalcast.errors import IngestError
from vitalcast.ingest.files import ingest_dicom
from vitalcast.ingest.quarantine import decrypt_raw
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher

# The files inside the pydicom wheel (get_testdata_files would also fetch the larger
# ones over the network; the tests use only what the wheel itself contains).
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_wheel_ships_test_files() -> None:
    assert (TEST_FILES / "CT_small.dcm").is_file()
    assert (TEST_FILES / "MR_small.dcm").is_file()


def test_study_attached_by_mrn_or_quarantined(db_session: Session, cipher: FieldCipher) -> None:
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    known = RecordBatch(patients=[PatientRecord(ref="ehr:1", mrn=str(ct.PatientID))])
    store_batch(db_session, known, source="fhir", location="t", cipher=cipher, now=NOW)

    report = ingest_dicom(
        db_session,
        [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm"],
        cipher=cipher,
        now=NOW,
    )
    db_session.commit()
    assert report.balanced()
    studies = report.kinds["imaging_study"]
    assert (studies.received, studies.stored, studies.quarantined) == (2, 1, 1)
    assert report.reasons["unknown_patient"] == 1
    study = db_session.scalars(select(ImagingStudy)).one()
    assert study.study_uid == str(ct.StudyInstanceUID)
    assert study.modality == "CT"
    assert (study.series_count, study.instance_count) == (1, 1)
    # StudyDate 20040119, StudyTime 072730, Timezone Offset From UTC -0500.
    assert study.started_at == datetime(2004, 1, 19, 12, 27, 30, tzinfo=UTC)
    # The header summary kept for review (decrypted) holds no Patient ID either.
    raws = " ".join(
        decrypt_raw(cipher, item) or "" for item in db_session.scalars(select(QuarantineItem))
    )
    assert raws
    assert str(ct.PatientID) not in raws
    assert "4MR1" not in raws


def test_a_study_naming_another_birth_date_is_not_attached(
    db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    """The MRN alone attached a study to a stored patient: two people sharing an MRN got
    each other's imaging. A header birth date that differs from the patient's now
    quarantines the study; an agreeing one (or none, above) attaches it."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    born = date(1961, 4, 5)
    patient = PatientRecord(ref="ehr:1", mrn=str(ct.PatientID), birth_date=born)
    store_batch(
        db_session,
        RecordBatch(patients=[patient]),
        source="fhir",
        location="t",
        cipher=cipher,
        now=NOW,
    )
    paths = []
    for name, header_birth in (("other.dcm", "19700101"), ("same.dcm", "19610405")):
        ct.PatientBirthDate = header_birth
        ct.StudyInstanceUID = pydicom.uid.generate_uid()
        ct.save_as(tmp_path / name)
        paths.append(tmp_path / name)

    report = ingest_dicom(db_session, paths, cipher=cipher, now=NOW)
    db_session.commit()
    assert report.balanced()
    studies = report.kinds["imaging_study"]
    assert (studies.received, studies.stored, studies.quarantined) == (2, 1, 1)
    assert [(r["location"], r["reason_code"]) for r in report.rejects] == [
        ("other.dcm", "identity_conflict")
    ]
    assert "1970" not in str(report.rejects)
    stored = db_session.scalars(select(ImagingStudy)).one()
    assert stored.study_uid == str(pydicom.dcmread(paths[1]).StudyInstanceUID)


def is_dicom_candidate(path: Path) -> bool:
    """A .dcm file, or any file with the DICM magic at byte 128 (PS3.10 7.1)."""
    return path.suffix.lower() == ".dcm" or path.read_bytes()[128:132] == b"DICM"


def test_folder_of_test_files_adds_up(db_session: Session, cipher: FieldCipher) -> None:
    report = ingest_dicom(db_session, [TEST_FILES], cipher=cipher, now=NOW)
    db_session.commit()
    assert report.balanced()
    files = [p for p in TEST_FILES.rglob("*") if p.is_file() and is_dicom_candidate(p)]
    readable, no_uid, uids = 0, 0, set()
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        readable += 1
        if ds.get("StudyInstanceUID"):
            uids.add(str(ds.StudyInstanceUID))
        else:
            no_uid += 1
    studies = report.kinds["imaging_study"]
    assert studies.received == len(uids) + (len(files) - readable) + no_uid
    assert report.reasons["missing_study_uid"] == no_uid
    assert report.reasons.get("unreadable_dicom", 0) == len(files) - readable
    # No patient is known in this store: every study is quarantined, none attached.
    assert studies.stored == 0
    assert report.reasons["unknown_patient"] == len(uids)


def test_missing_path_is_an_error(db_session: Session, cipher: FieldCipher, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        ingest_dicom(db_session, [tmp_path / "absent.dcm"], cipher=cipher)
    text = tmp_path / "notes.dcm"
    text.write_text("not dicom")
    with pytest.raises(IngestError, match="no readable DICOM"):
        ingest_dicom(db_session, [text], cipher=cipher)


_AMBIGUOUS = (
    "StudyTime (0008,0030) has no Timezone Offset From UTC (0008,0201) and falls in a"
    " daylight-saving change of the assumed time zone (--timezone)"
)


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        (
            {"StudyDate": "20241399"},
            "bad_study_time",
            "StudyDate (0008,0020) is not a date YYYYMMDD",
        ),
        ({"StudyTime": "256000"}, "bad_study_time", "StudyTime (0008,0030) is not a time HHMMSS"),
        (
            {"TimezoneOffsetFromUTC": "+9999"},
            "bad_study_time",
            "Timezone Offset From UTC (0008,0201) is not an offset -1200..+1400",
        ),
        # New York's clocks showed 01:30 twice on 2024-11-03 and never 02:30 on 2024-03-10.
        (
            {"TimezoneOffsetFromUTC": None, "StudyDate": "20241103", "StudyTime": "013000"},
            "ambiguous_time",
            _AMBIGUOUS,
        ),
        (
            {"TimezoneOffsetFromUTC": None, "StudyDate": "20240310", "StudyTime": "023000"},
            "ambiguous_time",
            _AMBIGUOUS,
        ),
    ],
)
def test_unreadable_study_time_is_quarantined(
    db_session: Session,
    cipher: FieldCipher,
    tmp_path: Path,
    changes: dict[str, str | None],
    code: str,
    reason: str,
) -> None:
    """An impossible StudyDate stored the study without a time, an impossible offset
    stored it at the time of the assumed zone, and a local time in a daylight-saving
    change at one of its two instants (or at none): the file is quarantined instead."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    known = RecordBatch(patients=[PatientRecord(ref="ehr:1", mrn=str(ct.PatientID))])
    store_batch(db_session, known, source="fhir", location="t", cipher=cipher, now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that the value is invalid: it is
        for keyword, value in changes.items():
            if value is None:
                delattr(ct, keyword)
            else:
                setattr(ct, keyword, value)
    path = tmp_path / "bad.dcm"
    ct.save_as(path)

    zone = ZoneInfo("America/New_York")
    report = ingest_dicom(db_session, [path], cipher=cipher, now=NOW, assume_tz=zone)
    db_session.commit()
    assert report.balanced()
    assert [(r["location"], r["reason_code"], r["reason"]) for r in report.rejects] == [
        ("bad.dcm", code, reason)
    ]
    assert db_session.scalars(select(ImagingStudy)).all() == []


def test_acr_nema_study_date_is_read(
    db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    """yyyy.mm.dd and HH:MM:SS, from before DICOM 3.0, are still dates and times (PS3.5)."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    known = RecordBatch(patients=[PatientRecord(ref="ehr:1", mrn=str(ct.PatientID))])
    store_batch(db_session, known, source="fhir", location="t", cipher=cipher, now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns: not the DICOM 3.0 form
        ct.StudyDate, ct.StudyTime = "1997.04.24", "14:04:38"
    path = tmp_path / "old.dcm"
    ct.save_as(path)
    ingest_dicom(db_session, [path], cipher=cipher, now=NOW)
    db_session.commit()
    study = db_session.scalars(select(ImagingStudy)).one()
    assert study.started_at == datetime(1997, 4, 24, 19, 4, 38, tzinfo=UTC)  # offset -0500


def test_study_date_without_time_is_a_day(
    db_session: Session, cipher: FieldCipher, tmp_path: Path
) -> None:
    """A StudyDate without a StudyTime was stored at midnight in the assumed zone: a time
    of day the file never gave, up to a day before the study was made. It is a day."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    known = RecordBatch(patients=[PatientRecord(ref="ehr:1", mrn=str(ct.PatientID))])
    store_batch(db_session, known, source="fhir", location="t", cipher=cipher, now=NOW)
    del ct.StudyTime
    path = tmp_path / "day.dcm"
    ct.save_as(path)
    ingest_dicom(db_session, [path], cipher=cipher, now=NOW)
    db_session.commit()
    study = db_session.scalars(select(ImagingStudy)).one()
    assert (study.started_at, study.started_on) == (None, date(2004, 1, 19))
