"""The preprocessing rules every source shares: codes, units, ranges and times.

Every adapter hands its records to :func:`vitalcast.ingest.service.store_batch`, which
applies these rules, so a FHIR Observation, an HL7 OBX segment, a PhysioNet row and an
MQTT message are held to the same standard:

- times carry a timezone and are normalised to UTC; times whose year is outside the
  clinical range (:mod:`vitalcast.clinical.times`, 1800-2200), times in the future
  (beyond a small clock-drift tolerance) and times before the patient's birth are
  rejected;
- every code is in the vocabulary (:mod:`vitalcast.clinical.codes`) and every value is
  converted to its code's one canonical UCUM unit; an unknown unit is never guessed;
- values outside the variable's plausible physiological range are device artefacts or
  transcription errors (HR 0, temperature -17.8 °C in PhysioNet 2012) and are rejected;
  so are a stay's height, weight and age descriptors (PhysioNet 2012 has heights of 1.8
  and 431.8 cm), which leave the stay stored without them;
- every variable is numeric: a text value alone is ``non_numeric_value``, as are
  numbers that are not finite (:func:`finite_number`, which adapters use to read them);
- no text holds a NUL character or an unpaired surrogate (:func:`unstorable_text`):
  PostgreSQL cannot store either, so the item is ``invalid_text``.

A rejected record raises :class:`Invalid`; its ``code`` is the quarantine reason code.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, replace
from datetime import date, datetime, timedelta
from operator import attrgetter
from typing import Any

from vitalcast.clinical.codes import (
    BY_CODE,
    BY_KEY,
    VariableSpec,
    is_plausible,
    plausible_range_text,
)
from vitalcast.clinical.records import EncounterRecord, ObservationRecord
from vitalcast.clinical.times import TimeOutOfRange, age_at, check_year, to_utc
from vitalcast.clinical.units import UnknownUnit, to_canonical
from vitalcast.text_input import UNSTORABLE, unstorable

# Clocks of bedside devices drift; a few minutes ahead is tolerated, more is an error.
FUTURE_TOLERANCE = timedelta(minutes=5)


class Invalid(ValueError):
    """A record breaking a rule; ``code`` is the quarantine reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def unstorable_text(record: Any) -> str | None:
    """Why ``record`` (a canonical record) cannot be stored as text, naming the field and
    never the value; None when every text in it can be.

    Checked by the store for every source before anything is written: one such character
    failed the whole unit of work in the database before (a file, an MQTT batch, an HL7
    message), and the quarantine row meant to hold it failed the same way.
    """
    names, getter, nested = _fields_of(type(record))
    values = getter(record) if len(names) > 1 else (getter(record),)
    if not nested:  # one scan per record: bulk loads check millions of them
        joined = "".join([v for v in values if isinstance(v, str)])
        if "\x00" not in joined if joined.isascii() else UNSTORABLE.search(joined) is None:
            return None
    for name, value in zip(names, values, strict=True):
        problem = _text_problem(value)
        if problem is not None:
            return f"{name} {problem}"
    return None


# Per record class: field names, a getter of their values, and whether a field may hold a
# container (its texts are then checked field by field).
_FIELDS: dict[type, tuple[tuple[str, ...], attrgetter[Any], bool]] = {}
_CONTAINERS = ("dict", "list", "tuple", "set", "Mapping", "Sequence", "Any")


def _fields_of(cls: type) -> tuple[tuple[str, ...], attrgetter[Any], bool]:
    if cls not in _FIELDS:
        found = fields(cls)
        names = tuple(f.name for f in found)
        nested = any(c in str(f.type) for f in found for c in _CONTAINERS)
        _FIELDS[cls] = (names, attrgetter(*names), nested)
    return _FIELDS[cls]


def _text_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return unstorable(value)
    if isinstance(value, dict):  # an encounter's attributes: keys and values
        return next(
            (p for k, v in value.items() for p in (_text_problem(k), _text_problem(v)) if p),
            None,
        )
    if isinstance(value, list | tuple):
        return next((p for v in value if (p := _text_problem(v)) is not None), None)
    return None


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def finite_number(raw: object) -> float:
    """``raw`` (a number, or its text) as a finite float; ValueError for anything else.

    One rule for every adapter's numbers: booleans are not numbers, text is ASCII decimal
    notation (a sign, digits 0-9, a point, an exponent), and infinities, NaN and numbers
    beyond the float range (``1e400``, a 400-digit integer, on which
    ``float()`` raises OverflowError rather than ValueError) are not measurements. The
    message never repeats the value (a mistyped cell may hold anything).
    """
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError("not a number")
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if isinstance(raw, str) and not _DECIMAL.fullmatch(raw.strip()):
        # float() also reads "1_000" (a digit separator: "9_5" would be 95), and digits
        # of any script ("٣٤"): a mistyped value is refused, not read as some number.
        raise ValueError("not a number: write it in digits 0-9")
    return value


def check_time(at: datetime, *, now: datetime, born_on: date | None, what: str) -> datetime:
    """``at`` in UTC, or :class:`Invalid` when naive, out of range, in the future or
    before birth (the year is checked before any conversion, which could overflow).
    Messages do not repeat the time: it is a date of care, which the quarantine's
    reason, the CLI and the API would otherwise show to whoever reads them."""
    if at.tzinfo is None:
        raise Invalid("naive_time", f"{what} has no timezone")
    try:
        at = to_utc(at, what)
    except TimeOutOfRange as exc:
        raise Invalid(exc.code, str(exc)) from None
    if at > now + FUTURE_TOLERANCE:
        raise Invalid("future_time", f"{what} is in the future")
    # Birth dates are calendar dates without a time zone: compare by date, so that a
    # measurement on the day of birth is never rejected.
    if born_on is not None and at.date() < born_on:
        raise Invalid("before_birth", f"{what} is before the patient's birth date")
    return at


#: The furthest ahead of UTC that a calendar day runs (UTC+14): a day up to this far past
#: today's UTC date has already begun somewhere.
_DAY_AHEAD = timedelta(hours=14)


def check_day(on: date, *, now: datetime, born_on: date | None, what: str) -> date:
    """``on`` (a date without a time of day), or :class:`Invalid` when its year is out
    of range, it has not yet begun anywhere (``future_time``) or it is before birth
    (``before_birth``). Messages do not repeat the date: it is a date of care.
    """
    try:
        check_year(on, what)
    except TimeOutOfRange as exc:
        raise Invalid(exc.code, str(exc)) from None
    if on > (now + _DAY_AHEAD + FUTURE_TOLERANCE).date():
        raise Invalid("future_time", f"{what} is a day in the future")
    if born_on is not None and on < born_on:
        raise Invalid("before_birth", f"{what} is a day before birth")
    return on


def check_observation(
    obs: ObservationRecord, *, now: datetime, born_on: date | None = None
) -> ObservationRecord:
    """Return the observation in canonical form (UTC, canonical unit), or raise Invalid."""
    spec = BY_CODE.get(obs.code)
    if spec is None:
        raise Invalid("unknown_code", f"code {obs.code!r} is not in the vocabulary")
    at = check_time(obs.effective_at, now=now, born_on=born_on, what="effective time")
    if obs.value is None:
        if obs.value_text is None:
            raise Invalid("no_value", "observation has neither a value nor a text value")
        # Every variable of the vocabulary is numeric (it has a plausible range), so a
        # text alone is not a measurement of it, whichever source sent it: an HL7 ST
        # heart rate, a FHIR valueString or a compact value_text alike.
        raise Invalid("non_numeric_value", f"{spec.label}: a text value where a number is needed")
    if obs.value != obs.value:  # NaN
        raise Invalid("no_value", "value is not a number")
    try:
        value, unit = to_canonical(obs.code, obs.value, obs.unit)
    except UnknownUnit as exc:
        raise Invalid("unknown_unit", f"{spec.label}: {exc}") from None
    if not is_plausible(spec, value):
        raise _implausible(spec, value)
    if value == obs.value and unit == obs.unit and at is obs.effective_at:
        return obs
    return replace(obs, value=value, unit=unit, effective_at=at)


def check_encounter(rec: EncounterRecord, *, now: datetime, born_on: date | None = None) -> None:
    """Raise :class:`Invalid` when the stay's times break the rules above."""
    admitted = check_time(rec.admitted_at, now=now, born_on=born_on, what="admission time")
    if rec.discharged_at is not None:
        discharged = check_time(rec.discharged_at, now=now, born_on=born_on, what="discharge time")
        if discharged < admitted:
            raise Invalid("discharge_before_admission", "discharge time is before admission")


# Age is not a charted variable; its range only tells a typo (300) from an age.
AGE_YEARS = VariableSpec("age", "30525-0", "a", "Age", "years", "descriptor", 0, 130)


def plausible_age(born: date | None, admitted_at: datetime) -> float | None:
    """The age at admission from a birth date, as the store keeps it: None without a
    birth date, and None outside :data:`AGE_YEARS` (a placeholder birth date such as
    1800-01-01 gives two centuries), the range :func:`drop_implausible_descriptors`
    holds every stored age to. Shared by the CDS Hooks card and the ages that follow a
    corrected birth date, so that neither scores an age the store would refuse."""
    age = age_at(born, admitted_at)
    return age if age is not None and is_plausible(AGE_YEARS, age) else None


def contradicts(born: date | None, stored: date | None) -> bool:
    """Whether a record's birth date contradicts that of the patient its MRN names: both
    known and different. Two people can share an MRN (two assigning authorities, a typing
    error), so such a record is not that patient: ingestion does not merge it, a DICOM
    study is not attached to it, a CDS card does not link to it. A missing birth date
    contradicts nothing."""
    return born is not None and stored is not None and born != stored


# The encounter's descriptors: measurements of a vocabulary variable, and age.
_DESCRIPTORS: tuple[tuple[str, VariableSpec], ...] = (
    ("height_cm", BY_KEY["height"]),
    ("weight_kg", BY_KEY["weight"]),
    ("age_years", AGE_YEARS),
)


def drop_implausible_descriptors(
    rec: EncounterRecord,
) -> tuple[EncounterRecord, list[tuple[str, float, Invalid]]]:
    """The stay without the descriptors outside their plausible range (or not finite).

    A mistyped height or age is not a reason to lose the stay, but it must not reach the
    models (a tree splits on it, an infinite age passed the population's "15 or over")
    or the patient page either, so height and weight are held to the range of the same
    variable charted as an observation, and age to :data:`AGE_YEARS`. Returns the cleaned
    record and, for the quarantine, each dropped descriptor's field name, value and reason.
    """
    dropped: list[tuple[str, float, Invalid]] = []
    for name, spec in _DESCRIPTORS:
        value = getattr(rec, name)
        if value is not None and not (math.isfinite(value) and is_plausible(spec, value)):
            dropped.append((name, value, _implausible(spec, value)))
    if not dropped:
        return rec, dropped
    names = {name for name, _, _ in dropped}
    clean = replace(
        rec,
        height_cm=None if "height_cm" in names else rec.height_cm,
        weight_kg=None if "weight_kg" in names else rec.weight_kg,
        age_years=None if "age_years" in names else rec.age_years,
    )
    return clean, dropped


def _implausible(spec: VariableSpec, value: float) -> Invalid:
    return Invalid(
        "implausible_value",
        f"{spec.label} {value:g} {spec.display_unit} outside plausible range"
        f" {plausible_range_text(spec)}",
    )
