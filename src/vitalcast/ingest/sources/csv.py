"""CSV files mapped to canonical records by a YAML mapping profile.

A profile names, for one export layout, which columns identify the patient and the
encounter, how categories map to canonical values, which columns are diagnoses, which
are labels (outcomes), and which are kept as encounter attributes. Profiles shipped with
vitalcast live in ``vitalcast/ingest/profiles/<name>.yaml``; a path to a YAML file works
too. A profile is validated in full before any row is read.

Only the columns a profile declares are read. A column it does not know (an export
that grew a ``patient_name`` or ``ssn`` column) is never stored, not even in the
encounter's attributes, which are kept in clear text: the ingest report names it
(:func:`unknown_columns`) so that the profile can be extended on purpose.

Each CSV row is one input item: it becomes an encounter (plus its patient, diagnoses and
outcomes), or is quarantined with its line in the file and the raw row. Reasons name the
column and what was wrong, never the cell's value (a mistyped cell may hold anything,
a name or an MRN included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitalcast.clinical.records import (
    ConditionRecord,
    EncounterRecord,
    OutcomeKind,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
    Rejected,
    Sex,
)
from vitalcast.ingest.sources._csv_file import CsvRow
from vitalcast.ingest.validate import finite_number


class ProfileError(ValueError):
    """A mapping profile that is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadOptions(_Strict):
    na_values: list[str] = Field(default_factory=list)
    keep_default_na: bool = False
    sep: str = Field(",", min_length=1, max_length=1)  # one character, as csv reads it


class SexMapping(_Strict):
    column: str
    map: dict[str, Sex]


class PatientMapping(_Strict):
    ref: str
    sex: SexMapping | None = None


class NumberMapping(_Strict):
    column: str
    transform: Literal["number", "interval_midpoint"] = "number"


class AttributeMapping(_Strict):
    """Columns kept in ``Encounter.attributes``: ``columns`` as text, ``numeric`` as
    numbers; ``exclude`` lists columns that are known but deliberately not kept."""

    columns: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class EncounterMapping(_Strict):
    ref: str
    kind: Literal["icu", "inpatient", "emergency", "outpatient"] = "inpatient"
    admitted_at: datetime  # a fixed anchor when the export has no dates
    length_of_stay_days: str | None = None
    age_years: NumberMapping | None = None
    attributes: AttributeMapping = Field(default_factory=AttributeMapping)


class ConditionMapping(_Strict):
    system: str
    columns: list[str]


class OutcomeMapping(_Strict):
    kind: OutcomeKind
    column: str
    positive: list[str]
    negative: list[str]
    known_after_discharge_days: float = 0


class Profile(_Strict):
    """A validated mapping profile."""

    name: str
    source: str = Field(max_length=32)
    description: str = ""
    read: ReadOptions = Field(default_factory=ReadOptions)
    patient: PatientMapping
    encounter: EncounterMapping
    conditions: ConditionMapping | None = None
    outcomes: list[OutcomeMapping] = Field(default_factory=list)

    def required_columns(self) -> set[str]:
        cols = {self.patient.ref, self.encounter.ref}
        if self.patient.sex:
            cols.add(self.patient.sex.column)
        if self.encounter.length_of_stay_days:
            cols.add(self.encounter.length_of_stay_days)
        if self.encounter.age_years:
            cols.add(self.encounter.age_years.column)
        if self.conditions:
            cols.update(self.conditions.columns)
        cols.update(o.column for o in self.outcomes)
        return cols

    def attribute_columns(self) -> set[str]:
        """Columns stored as encounter attributes (declared, and not mapped elsewhere)."""
        attrs = self.encounter.attributes
        return (
            (set(attrs.columns) | set(attrs.numeric))
            - set(attrs.exclude)
            - (self.required_columns())
        )

    def known_columns(self) -> set[str]:
        """Every column the profile declares, stored or deliberately left out."""
        attrs = self.encounter.attributes
        return (
            self.required_columns() | set(attrs.columns) | set(attrs.numeric) | set(attrs.exclude)
        )


def unknown_columns(columns: list[str], profile: Profile) -> list[str]:
    """The file's columns that ``profile`` does not declare (read, never stored)."""
    known = profile.known_columns()
    return [c for c in columns if c not in known]


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in the package."""
    folder = resources.files("vitalcast.ingest") / "profiles"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a YAML file by path.

    Raises:
        ProfileError: unknown name, unreadable file, or invalid content (all problems).
    """
    if name_or_path in shipped_profiles():
        text = (
            resources.files("vitalcast.ingest") / "profiles" / f"{name_or_path}.yaml"
        ).read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProfileError(
                f"profile {name_or_path!r} is neither a shipped profile"
                f" ({', '.join(shipped_profiles())}) nor a file"
            )
        text = path.read_text(encoding="utf-8")
    try:
        return Profile.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {name_or_path!r} is not valid YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ProfileError(f"profile {name_or_path!r} is invalid: {problems}") from None


_INTERVAL = re.compile(r"^[\[(]\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*[\])]$")


def _number(row: dict[str, str | None], column: str, transform: str = "number") -> float | None:
    """A finite float from ``row[column]`` (None when missing); ``interval_midpoint``
    reads age bands such as ``[70-80)``.

    Raises:
        ValueError: naming the column and what is wrong (not the cell's value).
    """
    text = row.get(column)
    if text is None or text.strip().lower() == "nan":
        return None
    if transform == "interval_midpoint":
        match = _INTERVAL.match(text.strip())
        if match is None:
            raise ValueError(f"{column}: not an interval like [70-80)")
        return (float(match.group(1)) + float(match.group(2))) / 2
    if not text.strip():
        raise ValueError(f"{column}: empty, expected a number")
    try:
        return finite_number(text)
    except ValueError as exc:
        raise ValueError(f"{column}: {exc}") from None


def _count(row: dict[str, str | None], column: str) -> float | int | None:
    """Numeric attribute cells: whole numbers (ids, counts) stay integers in JSON."""
    value = _number(row, column)
    return int(value) if value is not None and value.is_integer() else value


def parse_rows(rows: Sequence[CsvRow], profile: Profile, *, name: str) -> RecordBatch:
    """Map CSV rows (cells as text, ``None`` for missing) to canonical records.

    Locations are ``name:line`` with the row's line in the file. A row with more fields
    than the header is quarantined as ``malformed_line``: which of its cells belongs to
    which column cannot be known (one delimiter too many shifts them all).
    """
    batch = RecordBatch()
    stored = profile.attribute_columns()
    numeric = set(profile.encounter.attributes.numeric)
    for row in rows:
        where = f"{name}:{row.line}"
        batch.received += 1
        raw = json.dumps(row.cells | ({"": list(row.extra)} if row.extra else {}), default=str)
        if row.extra:
            fields, header = len(row.cells) + len(row.extra), len(row.cells)
            reason = f"{fields} fields, the header has {header}"
            batch.rejected.append(Rejected(where, "malformed_line", reason, raw, "encounter"))
            continue
        try:
            records = _map_row(row.cells, profile, where, stored, numeric)
        except ValueError as exc:
            batch.rejected.append(Rejected(where, "invalid_row", str(exc), raw, "encounter"))
            continue
        patient, encounter, conditions, outcomes = records
        batch.patients.append(patient)
        batch.encounters.append(encounter)
        batch.conditions.extend(conditions)
        batch.outcomes.extend(outcomes)
    return batch


def _map_row(
    row: dict[str, str | None],
    profile: Profile,
    where: str,
    stored: set[str],
    numeric: set[str],
) -> tuple[PatientRecord, EncounterRecord, list[ConditionRecord], list[OutcomeRecord]]:
    """One row's records; ValueError names the first problem found (column and what)."""
    prefix = profile.source
    patient_id, encounter_id = row.get(profile.patient.ref), row.get(profile.encounter.ref)
    if not patient_id or not encounter_id:
        raise ValueError(f"{profile.patient.ref} and {profile.encounter.ref} are required")
    pref, eref = f"{prefix}:{patient_id}", f"{prefix}:{encounter_id}"
    sex: Sex = "unknown"
    if profile.patient.sex:
        cell = row.get(profile.patient.sex.column)
        if cell is not None:
            if cell not in profile.patient.sex.map:
                raise ValueError(
                    f"{profile.patient.sex.column}: unknown category"
                    f" (expected {_one_of(profile.patient.sex.map)})"
                )
            sex = profile.patient.sex.map[cell]
    enc = profile.encounter
    admitted = enc.admitted_at.astimezone(UTC)
    discharged = None
    if enc.length_of_stay_days:
        los = _number(row, enc.length_of_stay_days)
        if los is None or los < 0:
            raise ValueError(f"{enc.length_of_stay_days}: missing or negative length of stay")
        try:
            discharged = admitted + timedelta(days=los)
        except OverflowError:  # found by fuzzing: "1e308" days crashed the whole file
            raise ValueError(
                f"{enc.length_of_stay_days}: length of stay {los:g} days is out of range"
            ) from None
    age = _number(row, enc.age_years.column, enc.age_years.transform) if enc.age_years else None
    attributes: dict[str, Any] = {}
    for column, cell in row.items():
        if column in stored:
            attributes[column] = _count(row, column) if column in numeric else cell
    encounter = EncounterRecord(
        ref=eref,
        patient_ref=pref,
        admitted_at=admitted,
        discharged_at=discharged,
        kind=enc.kind,
        age_years=age,
        attributes=attributes,
        source_ref=where,
    )
    conditions: list[ConditionRecord] = []
    if profile.conditions:
        for column in profile.conditions.columns:
            code = row.get(column)
            if code:
                conditions.append(
                    ConditionRecord(
                        pref,
                        code.strip(),
                        profile.conditions.system,
                        encounter_ref=eref,
                        source_ref=f"{where} {column}",
                    )
                )
    outcomes: list[OutcomeRecord] = []
    for out in profile.outcomes:
        cell = row.get(out.column)
        if cell in out.positive:
            value = 1.0
        elif cell in out.negative:
            value = 0.0
        else:
            raise ValueError(
                f"{out.column}: unknown category (expected {_one_of(out.positive + out.negative)})"
            )
        known = (discharged or admitted) + timedelta(days=out.known_after_discharge_days)
        # When the event itself happened is not in such exports (a readmission's date),
        # only when the label became known.
        outcomes.append(
            OutcomeRecord(pref, eref, out.kind, value, None, known, f"{where} {out.column}")
        )
    return PatientRecord(ref=pref, sex=sex, source_ref=where), encounter, conditions, outcomes


def _one_of(categories: Any) -> str:
    """The categories a column allows, for a message (the profile's words, not the cell's)."""
    return "one of: " + ", ".join(map(str, categories))
