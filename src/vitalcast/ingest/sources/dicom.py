"""DICOM headers to imaging-study records (pydicom; pixel data is never read).

Files are read with ``stop_before_pixels=True``: vitalcast keeps what a risk model or a
clinician's overview needs (modality, body part, study time, series and instance
counts), never images. Instances are grouped by Study Instance UID (0020,000D).

The study is attached to a patient by Patient ID (0010,0020), which is an MRN: it is
matched through the keyed MRN hash (:meth:`FieldCipher.mrn_hash`), so the plaintext
MRN is never stored, logged, or used as a reference. A study whose patient is unknown
is quarantined (``unknown_patient``), never attached to a guessed patient; one whose
Patient Birth Date (0010,0030) differs from the matched patient's is quarantined as
``identity_conflict`` (two people can share an MRN).

Study time: StudyDate + StudyTime (DICOM PS3.5 DA/TM), in the Timezone Offset From UTC
(0008,0201) when the file has one, else in ``assume_tz`` (the site's time zone); a
StudyDate without a StudyTime is kept as a day (``started_on``), not placed at midnight.
One of them present but unreadable quarantines the file (``bad_study_time``), as does a
time without an offset that falls in a daylight-saving change of ``assume_tz``
(``ambiguous_time``).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from vitalcast.clinical.records import ImagingStudyRecord, RecordBatch, Rejected
from vitalcast.clinical.times import TimeOutOfRange, in_dst_change, to_utc
from vitalcast.security.crypto import FieldCipher

SOURCE = "dicom"
# Reasons for which a file is no study at all; when every file has one, the input is
# refused. (A study with an unreadable time, bad_study_time, is a study: quarantined.)
NOT_A_STUDY = frozenset({"unreadable_dicom", "missing_study_uid"})
_PREAMBLE_MAGIC = b"DICM"


class DicomInputError(ValueError):
    """A named input that does not exist or is not DICOM at all."""


@dataclass
class _Study:
    uid: str
    patient_hash: str | None
    where: str
    birth_date: date | None = None
    modalities: Counter[str] = field(default_factory=Counter)
    body_part: str | None = None
    started_at: datetime | None = None
    started_on: date | None = None
    description: str | None = None
    series: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)
    files: int = 0


def find_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders (recursively) into DICOM files; named files are taken as given.

    In a folder, files that are neither ``*.dcm`` nor carry the ``DICM`` preamble magic
    (PS3.10 §7.1) are other content (READMEs, reports) and are not DICOM input.

    Raises:
        DicomInputError: a path does not exist.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and _looks_like_dicom(p))
        elif path.is_file():
            files.append(path)
        else:
            raise DicomInputError(f"{path}: no such file or folder")
    return files


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    with path.open("rb") as fh:
        return fh.read(132)[128:132] == _PREAMBLE_MAGIC


def parse_files(files: list[Path], *, cipher: FieldCipher, assume_tz: tzinfo = UTC) -> RecordBatch:
    """Group instance headers by study; each file is one input item."""
    batch = RecordBatch()
    studies: dict[str, _Study] = {}
    for path in files:
        where = path.name
        batch.received += 1
        try:
            with warnings.catch_warnings():
                # pydicom warns about recoverable encoding quirks; the header is still read.
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            reason = f"not a readable DICOM file ({type(exc).__name__})"
            batch.rejected.append(
                Rejected(where, "unreadable_dicom", reason, None, "imaging_study")
            )
            continue
        uid = str(ds.get("StudyInstanceUID") or "").strip()
        if not uid:
            raw = _summary(ds)
            reason = "no Study Instance UID (0020,000D)"
            batch.rejected.append(
                Rejected(where, "missing_study_uid", reason, raw, "imaging_study")
            )
            continue
        patient_id = str(ds.get("PatientID") or "").strip()
        study = studies.get(uid)
        if study is None:
            try:
                started_at, started_on = _study_time(ds, assume_tz)
            except _BadStudyTime as exc:
                raw = _summary(ds)
                batch.rejected.append(Rejected(where, exc.code, str(exc), raw, "imaging_study"))
                continue
            study = studies[uid] = _Study(
                uid=uid,
                patient_hash=cipher.mrn_hash(patient_id) if patient_id else None,
                where=where,
                birth_date=_birth_date(ds),
                body_part=_text(ds, "BodyPartExamined", 64),
                started_at=started_at,
                started_on=started_on,
                description=_text(ds, "StudyDescription", 300),
            )
        study.files += 1
        if ds.get("Modality"):
            study.modalities[str(ds.Modality)[:16]] += 1
        if ds.get("SeriesInstanceUID"):
            study.series.add(str(ds.SeriesInstanceUID))
        if ds.get("SOPInstanceUID"):
            study.instances.add(str(ds.SOPInstanceUID))
    for study in studies.values():
        # Instances of one study count as one item once grouped: the study record.
        batch.received -= study.files - 1
        ref = f"mrn-hmac:{study.patient_hash}" if study.patient_hash else "no-patient-id"
        batch.imaging_studies.append(
            ImagingStudyRecord(
                patient_ref=ref,
                study_uid=study.uid[:128],
                modality=study.modalities.most_common(1)[0][0] if study.modalities else None,
                body_part=study.body_part,
                started_at=study.started_at,
                started_on=study.started_on,
                description=study.description,
                patient_birth_date=study.birth_date,
                series_count=len(study.series) or None,
                instance_count=len(study.instances) or study.files,
                source_ref=f"{study.where} (+{study.files - 1} files)"
                if study.files > 1
                else study.where,
            )
        )
    return batch


def _birth_date(ds: Any) -> date | None:
    """PatientBirthDate (0010,0030), or None when absent or unreadable: it is only compared
    with the matched patient's (an unreadable one cannot contradict it), never stored."""
    text = str(ds.get("PatientBirthDate") or "").strip()
    if len(text) != 8 or not _ascii_digits(text):
        return None
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _text(ds: Any, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    return str(value).strip()[:limit] or None if value is not None else None


class _BadStudyTime(ValueError):
    """A study date, time or offset that is present but cannot be read (or, with the code
    ``ambiguous_time``, cannot be placed on one instant)."""

    def __init__(self, message: str, code: str = "bad_study_time") -> None:
        super().__init__(message)
        self.code = code


def _study_time(ds: Any, assume_tz: tzinfo) -> tuple[datetime | None, date | None]:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.FFFFFF, parts optional): ``(aware UTC,
    None)``; ``(None, the date)`` for a StudyDate without a StudyTime; ``(None, None)``
    without a StudyDate.

    A date alone is kept as a day, not placed at midnight: a study at midnight would be
    "known" up to a day before it was made (see :func:`vitalcast.clinical.times.known_from`).
    A value that is present but unreadable raises :class:`_BadStudyTime`, so that the file
    is quarantined: a study stored without its time, or at a time in the assumed zone when
    the file named another, would be silently wrong.
    """
    date_text = str(ds.get("StudyDate") or "").strip()
    if not date_text:
        return None, None
    if len(date_text) == 10 and date_text[4] == date_text[7] == ".":
        date_text = date_text.replace(".", "")  # ACR-NEMA yyyy.mm.dd (PS3.5 6.2, DA)
    time_text = str(ds.get("StudyTime") or "").strip().replace(":", "")  # or ACR-NEMA HH:MM:SS
    whole, _, frac = time_text.partition(".")
    if whole and (not _ascii_digits(whole) or len(whole) not in (2, 4, 6)):
        raise _BadStudyTime("StudyTime (0008,0030) is not a time HHMMSS")
    if frac and (not _ascii_digits(frac) or len(frac) > 6):
        raise _BadStudyTime("StudyTime (0008,0030) is not a time HHMMSS.FFFFFF")
    try:
        if len(date_text) != 8 or not _ascii_digits(date_text):
            raise ValueError
        day = datetime.strptime(date_text, "%Y%m%d").date()
    except ValueError:
        raise _BadStudyTime("StudyDate (0008,0020) is not a date YYYYMMDD") from None
    try:
        local = datetime.strptime(date_text + (whole + "000000")[:6], "%Y%m%d%H%M%S")
    except ValueError:
        raise _BadStudyTime("StudyTime (0008,0030) is not a time HHMMSS") from None
    local = local.replace(microsecond=int((frac + "000000")[:6])) if frac else local
    offset_text = str(ds.get("TimezoneOffsetFromUTC") or "").strip()
    tz = _offset(offset_text) if offset_text else assume_tz
    if not whole:
        return None, day  # the store's day rule checks its year, future and birth
    aware = local.replace(tzinfo=tz)
    if not offset_text and in_dst_change(aware):  # as HL7 v2 times without an offset
        raise _BadStudyTime(
            "StudyTime (0008,0030) has no Timezone Offset From UTC (0008,0201) and falls in"
            " a daylight-saving change of the assumed time zone (--timezone)",
            "ambiguous_time",
        )
    try:
        return to_utc(aware, "study time"), None
    except TimeOutOfRange:
        # Left unconverted (converting could overflow): the store's shared time rule
        # quarantines the study as time_out_of_range, with that reason.
        return aware, None


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _offset(text: str) -> tzinfo:
    """``-0500`` -> UTC-05:00 (DICOM PS3.3 C.12.1.1.8: -1200 to +1400)."""
    valid = len(text) == 5 and text[0] in "+-" and _ascii_digits(text[1:])
    minutes = int(text[1:3]) * 60 + int(text[3:5]) if valid else 0
    if not valid or int(text[3:5]) >= 60 or minutes > (14 * 60 if text[0] == "+" else 12 * 60):
        raise _BadStudyTime("Timezone Offset From UTC (0008,0201) is not an offset -1200..+1400")
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def _summary(ds: Any) -> str:
    """Non-identifying header summary for the quarantine (no names, no Patient ID)."""
    keys = ("Modality", "SOPClassUID", "SeriesInstanceUID", "SOPInstanceUID")
    return json.dumps({k: str(ds.get(k)) for k in keys if ds.get(k) is not None})
