"""The point-in-time rule of a day alone: known only once that day is over everywhere.

A FHIR onset ``"2019-03-04"`` names no time zone. Whatever zone it was written in, a
feature computed before :func:`day_over` must not see it, and one computed after may.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest

from vitalcast.clinical.times import day_over, known_from
from vitalcast.ingest.sources.fhir_map import ResourceProblem, optional_time
from vitalcast.ingest.validate import Invalid, check_day

DAY = date(2019, 3, 4)


@pytest.mark.parametrize("quarter_hours", range(-12 * 4, 14 * 4 + 1, 15))
def test_day_is_over_in_every_zone_before_it_is_known(quarter_hours: int) -> None:
    zone = timezone(timedelta(minutes=15 * quarter_hours))
    local_end = datetime.combine(DAY + timedelta(days=1), time(), zone)
    assert local_end <= day_over(DAY)


def test_day_over_is_the_end_of_the_day_in_the_westernmost_zone() -> None:
    assert day_over(DAY) == datetime(2019, 3, 5, 12, 0, tzinfo=UTC)
    westernmost = datetime.combine(DAY + timedelta(days=1), time(), timezone(timedelta(hours=-12)))
    assert day_over(DAY) == westernmost


def test_known_from_prefers_the_exact_time() -> None:
    exact = datetime(2019, 3, 4, 8, 0, tzinfo=UTC)
    assert known_from(exact, None) == exact
    assert known_from(None, DAY) == day_over(DAY)
    assert known_from(None, None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, (None, None)),
        ("2019-03-04", (None, DAY)),
        ("2019-03-04T10:00:00+02:00", (datetime(2019, 3, 4, 8, 0, tzinfo=UTC), None)),
    ],
)
def test_optional_time_keeps_a_day(text: str | None, expected: object) -> None:
    assert optional_time(text, what="Condition.onset") == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("2019", "imprecise_time"),
        ("2019-03", "imprecise_time"),
        ("2019-02-30", "bad_time"),
        ("2019-3-4", "bad_time"),  # malformed, not a year or a month alone
        ("03/04/2019", "bad_time"),
        ("20190304", "bad_time"),  # Python's fromisoformat reads it; FHIR does not allow it
        ("1700-01-01", "time_out_of_range"),
        ("2019-03-04T10:00:00", "naive_time"),
    ],
)
def test_optional_time_refuses_what_it_cannot_keep(text: str, code: str) -> None:
    with pytest.raises(ResourceProblem) as caught:
        optional_time(text, what="Condition.onset")
    assert caught.value.code == code
    assert "Condition.onset" in str(caught.value)
    assert text[:4] not in str(caught.value) or code == "time_out_of_range"


def test_check_day_future_birth_and_year() -> None:
    now = datetime(2026, 11, 1, 23, 0, tzinfo=UTC)
    # 2 November has begun in UTC+14 at 10:00 UTC on 1 November: not in the future.
    assert check_day(date(2026, 11, 2), now=now, born_on=None, what="onset_on")
    for day, born, code in [
        (date(2026, 11, 3), None, "future_time"),
        (date(1949, 12, 31), date(1950, 1, 3), "before_birth"),
        (date(1700, 1, 1), None, "time_out_of_range"),
    ]:
        with pytest.raises(Invalid) as caught:
            check_day(day, now=now, born_on=born, what="onset_on")
        assert caught.value.code == code
