"""A FHIR date search value as the UTC range it covers (parse_date_value), at the edges
the database tests do not reach: month and year ends, leap days, the clinical year range,
time zones that move a value across midnight, and values no datetime can hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vitalcast.serving.fhir_search import DateRange, parse_date_value


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


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
        ("2026-11-29T10:15:30Z", DateRange(_utc(2026, 11, 29, 10, 15, 30), None)),
        ("2026-11-29T10:15:30", DateRange(_utc(2026, 11, 29, 10, 15, 30), None)),
        # Fractional seconds beyond microseconds are cut, as FHIR lets a server do.
        ("2026-11-29T10:15:30.1234567Z", DateRange(_utc(2026, 11, 29, 10, 15, 30, 123456), None)),
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
    assert value == DateRange(_utc(2026, 11, 29, 10, 0, 0, 999999), None)
