"""The shared preprocessing rules: times (UTC, future, birth), units and ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from vitalcast.clinical.records import EncounterRecord, ObservationRecord
from vitalcast.ingest.validate import (
    Invalid,
    check_encounter,
    check_observation,
    drop_implausible_descriptors,
    finite_number,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def obs(**kw: object) -> ObservationRecord:
    base: dict[str, object] = {
        "patient_ref": "p",
        "code": "8867-4",
        "effective_at": NOW - timedelta(hours=1),
        "value": 80.0,
        "unit": "/min",
    }
    return ObservationRecord(**(base | kw))  # type: ignore[arg-type]


def reason(record: ObservationRecord, **kw: object) -> str:
    with pytest.raises(Invalid) as info:
        check_observation(record, now=NOW, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_times_are_normalised_to_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    clean = check_observation(obs(effective_at=datetime(2025, 6, 1, 7, tzinfo=eastern)), now=NOW)
    assert clean.effective_at == datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert clean.effective_at.tzinfo is UTC


def test_time_rules() -> None:
    assert reason(obs(effective_at=datetime(2025, 1, 1))) == "naive_time"
    assert reason(obs(effective_at=NOW + timedelta(hours=1))) == "future_time"
    # A few minutes of device clock drift are tolerated.
    check_observation(obs(effective_at=NOW + timedelta(minutes=2)), now=NOW)
    born = date(2025, 12, 31)
    assert reason(obs(effective_at=datetime(2025, 12, 30, tzinfo=UTC)), born_on=born) == (
        "before_birth"
    )
    check_observation(
        obs(effective_at=datetime(2025, 12, 31, 0, 5, tzinfo=UTC)), now=NOW, born_on=born
    )


def test_units_and_ranges() -> None:
    temp = check_observation(obs(code="8310-5", value=98.6, unit="°F"), now=NOW)
    assert temp.unit == "Cel"
    assert temp.value == pytest.approx(37.0)
    assert reason(obs(code="8310-5", value=-17.8, unit="Cel")) == "implausible_value"
    assert reason(obs(value=0.0)) == "implausible_value"  # HR 0: device artefact
    assert reason(obs(unit="furlongs")) == "unknown_unit"
    assert reason(obs(code="0000-0")) == "unknown_code"


def test_encounter_times() -> None:
    admitted = NOW - timedelta(days=2)
    check_encounter(EncounterRecord("e", "p", admitted, NOW - timedelta(days=1)), now=NOW)
    with pytest.raises(Invalid, match="before admission"):
        check_encounter(EncounterRecord("e", "p", admitted, admitted - timedelta(hours=1)), now=NOW)
    with pytest.raises(Invalid) as info:
        check_encounter(EncounterRecord("e", "p", NOW + timedelta(days=1)), now=NOW)
    assert info.value.code == "future_time"
    with pytest.raises(Invalid) as info:
        check_encounter(EncounterRecord("e", "p", admitted), now=NOW, born_on=NOW.date())
    assert info.value.code == "before_birth"


def test_implausible_height_and_weight_leave_the_stay_without_them() -> None:
    admitted = NOW - timedelta(days=2)
    sound = EncounterRecord("e", "p", admitted, age_years=70, height_cm=170.2, weight_kg=80.0)
    assert drop_implausible_descriptors(sound) == (sound, [])
    # PhysioNet 2012 set A has heights of 1.8 and 431.8 cm; set B a weight of 472 kg.
    for height, weight, dropped in [
        (431.8, 80.0, ["height_cm"]),
        (1.8, 472.0, ["height_cm", "weight_kg"]),
        (170.2, float("nan"), ["weight_kg"]),
    ]:
        rec = EncounterRecord("e", "p", admitted, age_years=70, height_cm=height, weight_kg=weight)
        clean, why = drop_implausible_descriptors(rec)
        assert [name for name, _, _ in why] == dropped
        assert all(exc.code == "implausible_value" for _, _, exc in why)
        assert all(getattr(clean, name) is None for name in dropped)
        kept = {"height_cm", "weight_kg"} - set(dropped)
        assert all(getattr(clean, name) == getattr(rec, name) for name in kept)
        assert (clean.age_years, clean.ref, clean.admitted_at) == (70, "e", admitted)
    _, why = drop_implausible_descriptors(EncounterRecord("e", "p", admitted, height_cm=431.8))
    assert str(why[0][2]) == "Body height 431.8 cm outside plausible range 100-230"


def test_years_outside_the_clinical_range_are_refused_before_any_conversion() -> None:
    """Converting these to UTC overflows (year 0, year 10000): OverflowError used to escape."""
    for at in (
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(1799, 12, 31, tzinfo=UTC),
    ):
        assert reason(obs(effective_at=at)) == "time_out_of_range"
    with pytest.raises(Invalid) as info:
        check_encounter(EncounterRecord("e", "p", datetime(2500, 1, 1, tzinfo=UTC)), now=NOW)
    assert info.value.code == "time_out_of_range"


def test_a_numeric_variable_needs_a_finite_number() -> None:
    # Whatever the source: an HL7 ST value, a FHIR valueString, a compact value_text.
    assert reason(obs(value=None, value_text="fast")) == "non_numeric_value"
    assert reason(obs(value=None, unit=None)) == "no_value"
    assert finite_number("72.5") == 72.5
    for raw in ("inf", "1e400", "nan", 10**400, True, "", "abc", None):
        with pytest.raises(ValueError, match="not a"):
            finite_number(raw)
