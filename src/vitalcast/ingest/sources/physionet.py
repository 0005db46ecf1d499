"""PhysioNet/CinC Challenge 2012 format: per-stay text files plus an Outcomes file.

Each record file holds ``Time,Parameter,Value`` rows; times are ``HH:MM`` since ICU
admission (hours may exceed 23). The first rows at 00:00 are the six descriptors
(RecordID, Age, Gender, Height, ICUType, Weight), where ``-1`` means "not recorded".
Relative times become absolute UTC times from an admission anchor, so that the stays
live in the same store as real-time data.

Reference: Silva et al., Computing in Cardiology 2012;39:245-248, and the challenge page
https://physionet.org/content/challenge-2012/1.0.0/.
"""

from __future__ import annotations

import csv
import io
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vitalcast.clinical.codes import BY_PHYSIONET, ICU_TYPES
from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
    Rejected,
    Sex,
)

SOURCE = "physionet2012"
DEFAULT_ANCHOR = datetime(2012, 1, 1, tzinfo=UTC)
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
_SEX: dict[str, Sex] = {"0": "female", "1": "male"}

# PhysioNet records FiO2 as a fraction (0.21-1.0); every other variable is already in
# the canonical unit of its code (see clinical.codes, including the Mg quirk).
_SOURCE_UNITS = {"FiO2": "1"}


# Far beyond the challenge's 48 h; bounds times so that a corrupt stamp cannot overflow.
MAX_HOURS = 24 * 366
MAX_LOS_DAYS = 3660


class PhysionetFormatError(ValueError):
    """The input is not in the challenge format at all (not one bad row)."""


@dataclass(frozen=True)
class RecordText:
    """One record file's name (for locations) and text."""

    name: str
    text: str


def parse_minutes(stamp: str) -> int:
    """``"47:59"`` -> 2879 minutes since ICU admission."""
    hours, sep, minutes = stamp.strip().partition(":")
    # isdecimal() alone admits non-ASCII digits ("²", "٣") that int() then rejects.
    if not sep or not _ascii_digits(hours) or not _ascii_digits(minutes) or int(minutes) >= 60:
        raise ValueError(f"time {stamp!r} is not HH:MM")
    if int(hours) > MAX_HOURS:
        raise ValueError(f"time {stamp!r} is more than {MAX_HOURS} hours after admission")
    return int(hours) * 60 + int(minutes)


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _number(text: str) -> float | None:
    value = float(text)
    return None if value == -1 else value


def parse_record(
    record: RecordText, *, anchor: datetime = DEFAULT_ANCHOR, prefix: str = SOURCE
) -> RecordBatch:
    """Parse one record file into patient, encounter and observation records.

    Raises:
        PhysionetFormatError: no header, or no RecordID descriptor.
    """
    batch = RecordBatch()
    lines = record.text.splitlines()
    if not lines or lines[0].strip().replace(" ", "") != "Time,Parameter,Value":
        raise PhysionetFormatError(f"{record.name}: first line must be 'Time,Parameter,Value'")
    descriptors: dict[str, str] = {}
    rows: list[tuple[int, str, str, str]] = []
    for lineno, row in enumerate(csv.reader(lines[1:]), start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{record.name}:{lineno}"
        if len(row) != 3:
            batch.received += 1
            batch.rejected.append(
                Rejected(
                    where, "malformed_line", "expected 3 comma-separated fields", ",".join(row)
                )
            )
            continue
        stamp, parameter, value = (cell.strip() for cell in row)
        if parameter in DESCRIPTORS and stamp == "00:00" and parameter not in descriptors:
            descriptors[parameter] = value
            continue
        rows.append((lineno, stamp, parameter, value))
    record_id = descriptors.get("RecordID")
    if not record_id:
        raise PhysionetFormatError(f"{record.name}: no RecordID descriptor")
    ref = f"{prefix}:{record_id}"
    patient = PatientRecord(
        ref=ref, sex=_SEX.get(descriptors.get("Gender", ""), "unknown"), source_ref=record.name
    )
    icu_type = descriptors.get("ICUType", "")
    encounter = EncounterRecord(
        ref=ref,
        patient_ref=ref,
        admitted_at=anchor,
        kind="icu",
        unit=ICU_TYPES.get(int(icu_type)) if _ascii_digits(icu_type) else None,
        age_years=_safe_number(descriptors.get("Age")),
        height_cm=_safe_number(descriptors.get("Height")),
        weight_kg=_safe_number(descriptors.get("Weight")),
        source_ref=record.name,
    )
    batch.patients.append(patient)
    batch.encounters.append(encounter)
    for lineno, stamp, parameter, value in rows:
        where = f"{record.name}:{lineno}"
        raw = f"{stamp},{parameter},{value}"
        batch.received += 1
        spec = BY_PHYSIONET.get(parameter)
        if spec is None:
            code = "empty_parameter" if not parameter else "unknown_parameter"
            batch.rejected.append(Rejected(where, code, f"unknown parameter {parameter!r}", raw))
            continue
        try:
            minutes = parse_minutes(stamp)
            number = float(value)
        except ValueError as exc:
            batch.rejected.append(Rejected(where, "malformed_line", str(exc), raw))
            continue
        batch.observations.append(
            ObservationRecord(
                patient_ref=ref,
                encounter_ref=ref,
                code=spec.code,
                effective_at=anchor + timedelta(minutes=minutes),
                value=number,
                unit=_SOURCE_UNITS.get(parameter, spec.unit),
                source_ref=where,
                identity=f"{ref}|{lineno}|{raw}",
            )
        )
    return batch


def _safe_number(text: str | None) -> float | None:
    try:
        return _number(text) if text else None
    except ValueError:
        return None


def iter_records(path: Path) -> Iterator[RecordText]:
    """Yield record files from a folder or a ``.tar.gz`` of the challenge.

    Raises:
        PhysionetFormatError: the path is neither, or the archive is truncated.
    """
    if path.is_dir():
        for file in sorted(path.rglob("*.txt")):
            if file.name.startswith("Outcomes"):
                continue
            yield RecordText(
                f"{path.name}/{file.relative_to(path)}", _decode(file.read_bytes(), file.name)
            )
        return
    if not path.is_file():
        raise PhysionetFormatError(f"{path}: no such file or folder")
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".txt"):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                yield RecordText(member.name, _decode(fh.read(), member.name))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PhysionetFormatError(f"{path.name}: cannot read archive ({exc})") from None


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PhysionetFormatError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def parse_outcomes(
    text: str, *, name: str = "Outcomes", anchor: datetime = DEFAULT_ANCHOR, prefix: str = SOURCE
) -> RecordBatch:
    """Parse an Outcomes file: in-hospital death and length of stay per RecordID.

    Length of stay (days from ICU admission to hospital discharge) also completes the
    encounter's discharge time; the outcome becomes known at discharge.
    """
    batch = RecordBatch()
    reader = csv.DictReader(io.StringIO(text, newline=""))  # csv module does the newlines
    need = {"RecordID", "Length_of_stay", "In-hospital_death"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise PhysionetFormatError(f"{name}: header must include {', '.join(sorted(need))}")
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise PhysionetFormatError(f"{name}: not a CSV file ({exc})") from None
    for lineno, row in enumerate(rows, start=2):
        where = f"{name}:{lineno}"
        batch.received += 1
        try:
            ref = f"{prefix}:{int(row['RecordID'])}"
            los_days = float(row["Length_of_stay"])
            death = int(row["In-hospital_death"])
        except (TypeError, ValueError):
            batch.rejected.append(
                Rejected(where, "malformed_line", "non-numeric outcome fields", str(row), "outcome")
            )
            continue
        # In-hospital_death is 0 (survived) or 1 (died); anything else would corrupt the
        # label. Length_of_stay is days, -1 when unknown (challenge data description).
        if death not in (0, 1) or not math.isfinite(los_days) or los_days > MAX_LOS_DAYS:
            batch.rejected.append(
                Rejected(
                    where,
                    "out_of_range",
                    f"death must be 0 or 1 and length of stay at most {MAX_LOS_DAYS} days",
                    str(row),
                    "outcome",
                )
            )
            continue
        discharge = anchor + timedelta(days=los_days) if los_days >= 0 else None
        batch.outcomes.append(
            OutcomeRecord(ref, ref, "in_hospital_death", float(death), discharge, discharge, where)
        )
    return batch
