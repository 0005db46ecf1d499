"""A FHIR date search value as the UTC range it covers (parse_date_value), at the edges
the database tests do not reach: month and year ends, leap days, the clinical year range,
time zones that move a value across midnight, seconds and their fractions as ranges, and
values no datetime can hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vitalcast.serving.fhir_search import DateRange, parse_date_value


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def _at(second: int, us: int = 0) -> datetime:
    """That second (and microsecond) of 2026-11-29T10:15 UTC."""
    return _utc(2026, 11, 29, 10, 15, second, us)


_S31 = _at(31)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026", DateRange(_utc(2026, 1, 1), _utc(2027, 1, 1))),
        ("2026-12", DateRange(_utc(2026, 12, 1), _utc(2027, 1, 1))),
        ("2026-02", DateRange(_utc(2026, 2, 1), _utc(2026, 3, 1))),
        ("2028-02-29", DateRange(_utc(2028, 2, 29), _utc(2028, 3, 1))),
        ("2026-12-31", DateRange(_utc(2026, 12, 31), _utc(2027, 1, 1))),
        ("2026-11-29T23:59", DateRange(_utc(2026, 11, 29, 23, 59), _utc(2026, 11, 30))),
        # A zone moves the range to UTC, across midnight either way.
        (
            "2026-11-29T00:30+01:00",
            DateRange(_utc(2026, 11, 28, 23, 30), _utc(2026, 11, 28, 23, 31)),
        ),
        ("2026-11-29T23:30-05:00", DateRange(_utc(2026, 11, 30, 4, 30), _utc(2026, 11, 30, 4, 31))),
        # A second is a range like a minute: up to the next second, across the minute,
        # the day and the year, and moved to UTC by its zone.
        ("2026-11-29T10:15:30Z", DateRange(_utc(2026, 11, 29, 10, 15, 30), _S31)),
        ("2026-11-29T10:15:30", DateRange(_utc(2026, 11, 29, 10, 15, 30), _S31)),
        ("2026-11-29T11:15:30+01:00", DateRange(_utc(2026, 11, 29, 10, 15, 30), _S31)),
        ("2026-12-31T23:59:59Z", DateRange(_utc(2026, 12, 31, 23, 59, 59), _utc(2027, 1, 1))),
        # A fraction is as wide as its last digit: .4 is 100 ms, .40 10 ms, .400 1 ms ...
        ("2026-11-29T10:15:30.4", DateRange(_at(30, 400000), _at(30, 500000))),
        ("2026-11-29T10:15:30.40Z", DateRange(_at(30, 400000), _at(30, 410000))),
        ("2026-11-29T10:15:30.400", DateRange(_at(30, 400000), _at(30, 401000))),
        ("2026-11-29T10:15:30.000000Z", DateRange(_at(30), _at(30, 1))),
        ("2026-11-29T10:15:30.123456Z", DateRange(_at(30, 123456), _at(30, 123457))),
        ("2026-11-29T10:15:30.9", DateRange(_at(30, 900000), _S31)),
        ("2026-11-29T10:15:59.999999Z", DateRange(_at(59, 999999), _utc(2026, 11, 29, 10, 16))),
        # ... down to the microsecond a stored time keeps: further digits are cut, as the
        # ingestion of a time cuts them.
        ("2026-11-29T10:15:30.1234567Z", DateRange(_at(30, 123456), _at(30, 123457))),
        ("2026-11-29T10:15:30.0000009Z", DateRange(_at(30), _at(30, 1))),
        ("2200", DateRange(_utc(2200, 1, 1), _utc(2201, 1, 1))),
        ("1800-01-01T00:00+14:00", DateRange(_utc(1799, 12, 31, 10), _utc(1799, 12, 31, 10, 1))),
    ],
)
def test_each_precision_is_its_range(text: str, expected: DateRange) -> None:
    assert parse_date_value(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29",  # not a leap year
        "2026-04-31",
        "2026-11-29T10:60",
        "2026-11-29T10:00:60Z",
        "2026-11-29T10:00-14:30",
        "1799",
        "2201-01",
        "0000",
        "20261129",  # ISO basic, not FHIR
        "2026-11-29T10:00:00+0100",
        "2026-W48",
        "2026-11-29t10:00Z",
        "\u0662\u0660\u0662\u0666",  # Arabic-Indic digits
    ],
)
def test_what_is_not_a_fhir_date_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a|outside the accepted range") as raised:
        parse_date_value(text)
    assert text not in str(raised.value)


def test_a_very_long_fraction_is_cut_not_a_crash() -> None:
    value = parse_date_value("2026-11-29T10:00:00." + "9" * 5000 + "Z")
    assert value == DateRange(_utc(2026, 11, 29, 10, 0, 0, 999999), _utc(2026, 11, 29, 10, 0, 1))
