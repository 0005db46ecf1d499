"""PhysioNet/CinC Challenge 2012 format: per-stay text files plus an Outcomes file.

Each record file holds ``Time,Parameter,Value`` rows; times are ``HH:MM`` since ICU
admission (hours may exceed 23). The first rows at 00:00 are the six descriptors
(RecordID, Age, Gender, Height, ICUType, Weight), where ``-1`` means "not recorded"; a
descriptor that cannot be read is quarantined on its own and the stay kept without it.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

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
from vitalcast.ingest.validate import finite_number

T = TypeVar("T")

SOURCE = "physionet2012"
DEFAULT_ANCHOR = datetime(2012, 1, 1, tzinfo=UTC)
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
_SEX: dict[str, Sex] = {"0": "female", "1": "male"}

# PhysioNet records FiO2 as a fraction (0.21-1.0); every other variable is already in
# the canonical unit of its code (see clinical.codes, including the Mg quirk).
_SOURCE_UNITS = {"FiO2": "1"}


class PhysionetFormatError(ValueError):
    """The input is not in the challenge format at all (not one bad row)."""


@dataclass(frozen=True)
class RecordText:
    """One record file's name (for locations) and text."""

    name: str
    text: str


# Far beyond the challenge's 48 h; bounds times so that a corrupt stamp cannot overflow.
MAX_HOURS = 24 * 366
MAX_LOS_DAYS = 3660


def parse_minutes(stamp: str) -> int:
    """``"47:59"`` -> 2879 minutes since ICU admission."""
    hours, sep, minutes = stamp.strip().partition(":")
    # isdigit() alone admits non-ASCII digits ("²", "٣") that int() then rejects.
    if not sep or not _ascii_digits(hours) or not _ascii_digits(minutes) or int(minutes) >= 60:
        raise ValueError(f"time {stamp!r} is not HH:MM")
    if int(hours) > MAX_HOURS:
        raise ValueError(f"time {stamp!r} is more than {MAX_HOURS} hours after admission")
    return int(hours) * 60 + int(minutes)


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_record(
    record: RecordText,
    *,
    anchor: datetime = DEFAULT_ANCHOR,
    prefix: str = SOURCE,
    discharged_at: datetime | None = None,
) -> RecordBatch:
    """Parse one record file into patient, encounter and observation records.

    ``discharged_at`` (from the Outcomes file) completes the encounter. Two rows with the
    same time, parameter and value are the same measurement (the challenge files repeat
    some): they share a dedup identity, so the second is counted as a duplicate.

    Raises:
        PhysionetFormatError: no header, or no RecordID descriptor.
    """
    batch = RecordBatch()
    lines = record.text.splitlines()
    if not lines or lines[0].strip().replace(" ", "") != "Time,Parameter,Value":
        raise PhysionetFormatError(f"{record.name}: first line must be 'Time,Parameter,Value'")
    descriptors: dict[str, tuple[int, str]] = {}  # parameter -> (line, value)
    rows: list[tuple[int, str, str, str]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        row = line.split(",")
        if len(row) != 3:
            if not line.strip():
                continue
            batch.received += 1
            batch.rejected.append(
                Rejected(
                    f"{record.name}:{lineno}",
                    "malformed_line",
                    "expected 3 comma-separated fields",
                    line,
                )
            )
            continue
        stamp, parameter, value = row[0].strip(), row[1].strip(), row[2].strip()
        if parameter in DESCRIPTORS and stamp == "00:00" and parameter not in descriptors:
            descriptors[parameter] = (lineno, value)
            continue
        rows.append((lineno, stamp, parameter, value))
    record_id = descriptors.get("RecordID", (0, ""))[1]
    if not record_id:
        raise PhysionetFormatError(f"{record.name}: no RecordID descriptor")
    ref = f"{prefix}:{record_id}"
    read = _Descriptors(record.name, descriptors, batch)
    gender = read.category("Gender", _SEX)
    icu_type = read.category("ICUType", {str(k): v for k, v in ICU_TYPES.items()})
    batch.patients.append(PatientRecord(ref=ref, sex=gender or "unknown", source_ref=record.name))
    batch.encounters.append(
        EncounterRecord(
            ref=ref,
            patient_ref=ref,
            admitted_at=anchor,
            discharged_at=discharged_at,
            kind="icu",
            unit=icu_type,
            age_years=read.number("Age"),
            height_cm=read.number("Height"),
            weight_kg=read.number("Weight"),
            source_ref=record.name,
        )
    )
    times: dict[str, datetime] = {}  # many rows share a time stamp
    observations = batch.observations
    rejected = batch.rejected
    for lineno, stamp, parameter, value in rows:
        spec = BY_PHYSIONET.get(parameter)
        raw = f"{stamp},{parameter},{value}"
        if spec is None:
            code = "empty_parameter" if not parameter else "unknown_parameter"
            where = f"{record.name}:{lineno}"
            rejected.append(Rejected(where, code, f"unknown parameter {parameter!r}", raw))
            continue
        try:
            at = times.get(stamp)
            if at is None:
                at = times[stamp] = anchor + timedelta(minutes=parse_minutes(stamp))
            number = float(value)
        except ValueError as exc:
            rejected.append(Rejected(f"{record.name}:{lineno}", "malformed_line", str(exc), raw))
            continue
        observations.append(
            ObservationRecord(
                patient_ref=ref,
                encounter_ref=ref,
                code=spec.code,
                effective_at=at,
                value=number,
                unit=_SOURCE_UNITS.get(parameter, spec.unit),
                source_ref=f"{record.name}:{lineno}",
                identity=f"{ref}|{raw}",
            )
        )
    batch.received += len(rows)
    return batch


class _Descriptors:
    """A record's descriptor values; an unreadable one is quarantined (kind
    ``descriptor``) and read as not recorded, so the stay itself is kept.

    ``-1`` or an empty value means "not recorded". Any other value that is not a finite
    number is ``non_numeric_value``, and a category outside the challenge's codes is
    ``implausible_value``. (Ranges of numbers are the shared rule's, applied when the
    stay is stored: :func:`vitalcast.ingest.validate.drop_implausible_descriptors`.)
    """

    def __init__(self, name: str, values: dict[str, tuple[int, str]], batch: RecordBatch) -> None:
        self.name, self.values, self.batch = name, values, batch

    def _recorded(self, parameter: str) -> tuple[str, float] | None:
        """The value's location and number, None when not recorded or unreadable."""
        lineno, text = self.values.get(parameter, (0, ""))
        if not text:
            return None
        where = f"{self.name}:{lineno}"
        try:
            value = finite_number(text)
        except ValueError as exc:
            self._reject(where, parameter, "non_numeric_value", f"{parameter}: {exc}")
            return None
        return None if value == -1 else (where, value)

    def number(self, parameter: str) -> float | None:
        recorded = self._recorded(parameter)
        return None if recorded is None else recorded[1]

    def category(self, parameter: str, codes: dict[str, T]) -> T | None:
        recorded = self._recorded(parameter)
        if recorded is None:
            return None
        where, value = recorded
        code = f"{value:.0f}" if value.is_integer() else ""
        if code not in codes:
            reason = f"{parameter}: not one of the codes {', '.join(codes)}"
            self._reject(where, parameter, "implausible_value", reason)
            return None
        return codes[code]

    def _reject(self, where: str, parameter: str, code: str, reason: str) -> None:
        raw = f"00:00,{parameter},{self.values[parameter][1]}"
        self.batch.received += 1  # an item of its own, like each row
        self.batch.rejected.append(Rejected(where, code, reason, raw, "descriptor"))


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

    Each row gives two outcome records. Length_of_stay is days from ICU admission to the
    end of the hospital stay, so it places the discharge (which is also when both labels
    become known); Survival is days from ICU admission to death (-1: no recorded death).
    A missing length of stay (-1) quarantines that outcome, never a guessed value.

    Raises:
        PhysionetFormatError: the header lacks a required column.
    """
    batch = RecordBatch()
    reader = csv.DictReader(io.StringIO(text, newline=""))  # csv module does the newlines
    need = {"RecordID", "Length_of_stay", "In-hospital_death"}
    try:
        fields = reader.fieldnames
        rows = list(reader)
    except csv.Error as exc:
        raise PhysionetFormatError(f"{name}: not a CSV file ({exc})") from None
    if fields is None or not need <= set(fields):
        raise PhysionetFormatError(f"{name}: header must include {', '.join(sorted(need))}")
    for lineno, row in enumerate(rows, start=2):
        where = f"{name}:{lineno}"
        raw = ",".join(str(v) for v in row.values())
        batch.received += 2
        try:
            ref = f"{prefix}:{int(row['RecordID'])}"
            los_days = float(row["Length_of_stay"])
            death = int(row["In-hospital_death"])
            survival_days = float(row.get("Survival") or -1)
        except (TypeError, ValueError):
            reason = "non-numeric outcome fields"
            for _ in range(2):
                batch.rejected.append(Rejected(where, "malformed_line", reason, raw, "outcome"))
            continue
        # In-hospital_death is 0 (survived) or 1 (died); anything else would corrupt the
        # label. Length_of_stay is days, -1 when unknown (challenge data description).
        bounded = all(math.isfinite(v) and v <= MAX_LOS_DAYS for v in (los_days, survival_days))
        if death not in (0, 1) or not bounded:
            reason = "outcome fields out of range (death 0/1, days finite and bounded)"
            for _ in range(2):
                batch.rejected.append(Rejected(where, "out_of_range", reason, raw, "outcome"))
            continue
        discharge = anchor + timedelta(days=los_days) if los_days >= 0 else None
        died_at = anchor + timedelta(days=survival_days) if death and survival_days >= 0 else None
        batch.outcomes.append(
            OutcomeRecord(
                ref,
                ref,
                "in_hospital_death",
                float(death),
                died_at or discharge,
                discharge,
                f"{where} In-hospital_death",
            )
        )
        if discharge is None:
            batch.rejected.append(
                Rejected(
                    f"{where} Length_of_stay",
                    "missing_value",
                    "length of stay not recorded (-1)",
                    raw,
                    "outcome",
                )
            )
            continue
        batch.outcomes.append(
            OutcomeRecord(
                ref,
                ref,
                "length_of_stay_days",
                los_days,
                discharge,
                discharge,
                f"{where} Length_of_stay",
            )
        )
    return batch


def read_outcomes(
    path: Path, *, anchor: datetime = DEFAULT_ANCHOR, prefix: str = SOURCE
) -> RecordBatch:
    """Read and parse an Outcomes file.

    Raises:
        PhysionetFormatError: missing, not UTF-8, or not an Outcomes file.
    """
    if not path.is_file():
        raise PhysionetFormatError(f"{path}: no such outcomes file")
    return parse_outcomes(
        _decode(path.read_bytes(), path.name), name=path.name, anchor=anchor, prefix=prefix
    )


def discharge_times(outcomes: RecordBatch) -> dict[str, datetime]:
    """Encounter ref -> discharge time, from parsed outcomes."""
    return {
        o.encounter_ref: o.occurred_at
        for o in outcomes.outcomes
        if o.kind == "length_of_stay_days" and o.occurred_at is not None
    }


def iter_batches(
    records: Sequence[RecordText],
    outcomes: RecordBatch | None = None,
    *,
    records_per_batch: int = 500,
    anchor: datetime = DEFAULT_ANCHOR,
    prefix: str = SOURCE,
) -> Iterator[RecordBatch]:
    """Parse records into batches of ``records_per_batch`` stays, each with its outcomes.

    Outcomes whose RecordID is not among ``records`` come in the last batch, where the
    store quarantines them as referring to an unknown encounter. Bounded batches keep
    memory flat for the 1.7 million rows of a set; the caller stores every batch in one
    transaction, so the archive is still all-or-nothing.
    """
    discharges = discharge_times(outcomes) if outcomes else {}
    by_ref: dict[str, list[OutcomeRecord]] = {}
    for out in outcomes.outcomes if outcomes else []:
        by_ref.setdefault(out.encounter_ref, []).append(out)
    pending_rejects = list(outcomes.rejected) if outcomes else []
    pending_received = outcomes.received if outcomes else 0
    batch = RecordBatch()
    for n, record in enumerate(records, start=1):
        part = parse_record(record, anchor=anchor, prefix=prefix)
        ref = part.encounters[0].ref
        if ref in discharges:
            part.encounters[0] = replace(part.encounters[0], discharged_at=discharges[ref])
        for out in by_ref.pop(ref, []):
            part.outcomes.append(out)
            part.received += 1
            pending_received -= 1
        batch.extend(part)
        if n % records_per_batch == 0:
            yield batch
            batch = RecordBatch()
    for outs in by_ref.values():
        batch.outcomes.extend(outs)
    batch.rejected.extend(pending_rejects)
    batch.received += pending_received
    yield batch
