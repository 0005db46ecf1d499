"""The one rule for every time and date that enters vitalcast: a year in a clinical range.

Python's ``datetime`` spans years 1 to 9999, but a time near either end cannot be moved
to UTC: ``0001-01-01T00:00:00+14:00`` is in year 0 in UTC and ``99991231235959-1400``
in year 10000, and ``astimezone`` (or a comparison with an aware time, or the database
driver) raises :class:`OverflowError`, which is not a :class:`ValueError`. Parsers that
caught only ``ValueError`` let such input through to a 500, a CLI traceback, a run that
stopped half-way, or an MLLP connection closed without an ACK.

No clinical record is dated before 1800 or after 2200, so any time or date outside those
years is refused here, *before* any conversion, with a reason that says so. Every parser
(FHIR, HL7 v2, DICOM, the compact API and MQTT payloads, query parameters) and the shared
ingest rules (:func:`vitalcast.ingest.validate.check_time`) go through these functions,
so the range and the message are the same wherever a time arrives.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, WithJsonSchema

MIN_YEAR = 1800
MAX_YEAR = 2200
#: Quarantine reason code and error wording of a time outside the range.
OUT_OF_RANGE = "time_out_of_range"


class TimeOutOfRange(ValueError):
    """A time or date whose year is outside ``MIN_YEAR``-``MAX_YEAR``."""

    code = OUT_OF_RANGE


def check_year(value: date, what: str) -> None:
    """Raise :class:`TimeOutOfRange` unless ``value``'s year is in the clinical range.

    For an aware time the year is checked as written (before any conversion), which
    keeps every conversion of an accepted time far from ``datetime``'s limits.
    """
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise TimeOutOfRange(
            f"{what}: year {value.year} is outside the accepted range {MIN_YEAR}-{MAX_YEAR}"
        )


def in_dst_change(local: datetime) -> bool:
    """Whether a wall-clock time in its zone was shown twice (01:30 as autumn's DST ends)
    or never (02:30 as spring's begins): it is then two instants an hour apart, or none,
    and a source that sent it without an offset cannot be placed on one instant."""
    return local.utcoffset() != local.replace(fold=1).utcoffset()


def to_utc(value: datetime, what: str) -> datetime:
    """An aware time in UTC, or :class:`TimeOutOfRange` (never ``OverflowError``)."""
    check_year(value, what)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # unreachable after check_year; kept so no caller ever sees it
        raise TimeOutOfRange(f"{what}: cannot be expressed in UTC") from None


def parse_iso(text: str, what: str) -> datetime:
    """ISO 8601 text as a ``datetime`` (aware if an offset is given), year in range.

    Raises:
        ValueError: not ISO 8601 (the message does not echo the text, which may be any
            free text sent in a time field); :class:`TimeOutOfRange` for the year.
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ValueError(f"{what} is not an ISO 8601 date-time") from None
    check_year(value, what)
    return value


#: The last instant at which a calendar day is still under way somewhere: the day ends
#: at midnight in UTC-12 (the westernmost offset in use), which is noon the next day UTC.
_DAY_ENDS_EVERYWHERE = timedelta(days=1, hours=12)


def day_over(on: date) -> datetime:
    """The first instant (UTC) at which the calendar day ``on`` is over in every time zone.

    A date without a time of day (a FHIR ``onsetDateTime`` of ``"2019-03-04"``) says
    that something happened some time that day, in a zone it does not name. A
    point-in-time rule that takes it as known any earlier (say at midnight UTC) would let
    a feature computed at noon see an event that happened at 18:00 that day: the future.
    """
    return datetime.combine(on, time(), UTC) + _DAY_ENDS_EVERYWHERE


def known_from(at: datetime | None, on: date | None) -> datetime | None:
    """When a time stated exactly (``at``) or as a day alone (``on``) may be used as past.

    The one point-in-time rule for the store's pairs of columns (``Condition.onset_at``/
    ``onset_on``, ``ImagingStudy.started_at``/``started_on``): an exact time is known
    from itself, a day from :func:`day_over`; None when neither is known.
    """
    if at is not None:
        return at
    return day_over(on) if on is not None else None


def in_clinical_range(value: datetime) -> datetime:
    """Pydantic after-validator: the same year rule for request and message fields."""
    check_year(value, "date-time")
    return value


def not_a_number(value: Any) -> Any:
    """Pydantic before-validator: a JSON number is not a date-time. Pydantic would read
    ``"time": 20261130`` as seconds since 1970 (1970-08-24) and the reading was stored
    there; the schema says text, so a number is refused as text is elsewhere."""
    if isinstance(value, int | float):  # bool is an int too
        raise ValueError("must be an ISO 8601 date-time text with a timezone, not a number")
    return value


#: JSON-schema pattern of the year range (1800-2200), so that the OpenAPI document says
#: what the validator accepts and generated clients and tests keep to it.
YEAR_PATTERN = "^(1[89][0-9]{2}|2[01][0-9]{2}|2200)-"

#: An aware date-time (offset required) in the clinical year range, for pydantic models.
ClinicalDateTime = Annotated[
    AwareDatetime,
    BeforeValidator(not_a_number),
    AfterValidator(in_clinical_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": YEAR_PATTERN}),
]


def age_at(born: date | None, when: datetime) -> float | None:
    """Age in completed years at admission, as training's stays carry it (PhysioNet's
    Age descriptor, the store's encounter age): not a fraction, not at scoring time.

    Ingestion stores it on an encounter whose source gives a birth date but no age (FHIR,
    HL7 v2), and the CDS Hooks path computes it from the hook's Patient: both read the
    same number for the same stay."""
    if born is None:
        return None
    day = when.astimezone(UTC).date()
    return float(day.year - born.year - ((day.month, day.day) < (born.month, born.day)))
