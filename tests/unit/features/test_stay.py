"""Point-in-time features: exact values, no look-ahead, one code path for batch and online."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modeling_data import GCS, HR, T0, synthetic_stays
from vitalcast.clinical.codes import BY_KEY, ICU_TYPES, icu_type
from vitalcast.features import (
    FEATURE_NAMES,
    StayInput,
    build_feature_frame,
    describe_feature,
    feature_label,
    stay_features,
)


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def _stay(obs: list[tuple[str, float, int]]) -> StayInput:
    """Observations given as (code, value, minutes since admission)."""
    rows = sorted(((c, v, T0 + timedelta(minutes=m)) for c, v, m in obs), key=lambda r: r[2])
    return StayInput(T0, 70.0, "female", "MICU", 165.0, 70.0, tuple(rows))


def test_window_statistics_are_exact() -> None:
    stay = _stay([(HR, 100, 60), (HR, 80, 120), (HR, 90, 20 * 60), (HR, 70, 29 * 60)])
    f = stay_features(stay, T0 + timedelta(hours=30))
    assert f["hr_last_all"] == 70
    assert f["hr_min_all"] == 70
    assert f["hr_max_all"] == 100
    assert f["hr_mean_all"] == 85
    assert f["hr_count_all"] == 4
    assert f["hr_hours_since_last_all"] == pytest.approx(1.0)
    # Least-squares slope of (1,100), (2,80), (20,90), (29,70) in per-hour units.
    ts, vs = [1, 2, 20, 29], [100, 80, 90, 70]
    mt, mv = sum(ts) / 4, sum(vs) / 4
    slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / sum(
        (t - mt) ** 2 for t in ts
    )
    assert f["hr_slope_all"] == pytest.approx(slope)
    # Last 24 h is (6 h, 30 h]: only the two late values; last 6 h is (24 h, 30 h].
    assert (f["hr_count_24h"], f["hr_mean_24h"]) == (2, 80)
    assert (f["hr_count_6h"], f["hr_mean_6h"]) == (1, 70)
    assert math.isnan(f["lactate_last_all"])
    assert f["lactate_count_all"] == 0
    assert f["hours_since_admission"] == 30
    assert f["unit_micu"] == 1
    assert f["unit_sicu"] == 0
    assert f["sex_male"] == 0
    assert f["bmi"] == pytest.approx(70 / 1.65**2)


def test_names_are_the_ordered_keys() -> None:
    f = stay_features(_stay([(HR, 90, 5)]), T0 + timedelta(hours=1))
    assert set(f) == set(FEATURE_NAMES)
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))


@settings(max_examples=60, deadline=None)
@given(
    past=st.lists(
        st.tuples(st.sampled_from([HR, GCS]), st.floats(3, 200), st.integers(0, 600)),
        max_size=12,
    ),
    future=st.lists(
        st.tuples(st.sampled_from([HR, GCS]), st.floats(3, 200), st.integers(601, 3000)),
        min_size=1,
        max_size=12,
    ),
)
def test_future_observations_never_change_features_at_t(
    past: list[tuple[str, float, int]], future: list[tuple[str, float, int]]
) -> None:
    as_of = T0 + timedelta(minutes=600)
    assert _same(stay_features(_stay(past), as_of), stay_features(_stay(past + future), as_of))


def test_batch_frame_uses_the_per_stay_path() -> None:
    stays, _labels, _groups = synthetic_stays(12)
    frame = build_feature_frame(stays, (6.0, 24.0))
    assert len(frame) == 24
    for _i, row in frame.iterrows():
        online = stay_features(stays[row["stay_id"]], T0 + timedelta(hours=row["landmark_h"]))
        assert _same({k: float(row[k]) for k in FEATURE_NAMES}, online)


def test_landmarks_after_the_end_of_a_stay_are_skipped() -> None:
    stays, _labels, _groups = synthetic_stays(2)
    ends = {"s0": T0 + timedelta(hours=10), "s1": None}
    frame = build_feature_frame(stays, (6.0, 12.0), ends_at=ends)
    assert list(zip(frame["stay_id"], frame["landmark_h"], strict=True)) == [
        ("s0", 6.0),
        ("s1", 6.0),
        ("s1", 12.0),
    ]


def test_clinical_words() -> None:
    assert feature_label("lactate_max_24h") == "Lactate, highest (last 24 h)"
    assert describe_feature("lactate_last_all", 4.1) == "Lactate, latest (this stay): 4.1 mmol/L"
    assert (
        describe_feature("gcs_min_all", math.nan)
        == "Glasgow Coma Scale, lowest (this stay): not measured"
    )
    assert describe_feature("resp_rate_slope_all", 0.5) == (
        "Respiratory rate, trend per hour (this stay): +0.5 /min/h"
    )


def test_height_and_admission_weight_charted_as_observations_are_the_descriptors() -> None:
    """A FHIR or HL7 stay charts height and weight as observations, not as admission
    descriptors. The first height counts from the time it was measured, never before; a
    weight at the admission instant is the admission weight and, as PhysioNet's 00:00
    descriptor row, not part of the weight series; a descriptor, where there is one,
    wins and leaves every weight in the series."""
    height, weight = BY_KEY["height"].code, BY_KEY["weight"].code
    rows = [(weight, 82.0, 0), (height, 180.0, 120), (weight, 78.0, 600), (height, 181.0, 700)]
    obs = tuple((c, v, T0 + timedelta(minutes=m)) for c, v, m in rows)
    fhir = StayInput(T0, 70.0, "male", "MICU", None, None, obs)
    early = stay_features(fhir, T0 + timedelta(minutes=60))
    assert math.isnan(early["height_cm"])
    assert early["weight_kg"] == 82.0
    assert math.isnan(early["bmi"])
    assert early["weight_count_all"] == 0
    late = stay_features(fhir, T0 + timedelta(hours=12))
    assert (late["height_cm"], late["weight_kg"]) == (180.0, 82.0)  # the first measured
    assert late["bmi"] == pytest.approx(82.0 / 1.8**2)
    assert (late["weight_count_all"], late["weight_last_all"]) == (1, 78.0)
    # A first weight after the admission instant is part of the series only.
    later = StayInput(T0, 70.0, "male", "MICU", None, None, obs[1:])
    assert math.isnan(stay_features(later, T0 + timedelta(hours=12))["weight_kg"])
    described = stay_features(
        StayInput(T0, 70.0, "male", "MICU", 175.0, 90.0, obs), T0 + timedelta(hours=12)
    )
    assert (described["height_cm"], described["weight_kg"]) == (175.0, 90.0)
    assert described["weight_count_all"] == 2


def test_values_from_before_admission_are_not_of_this_stay() -> None:
    """A value sent with the stay but taken before its admission (an emergency-department
    lactate, a height from an earlier visit) is left out: the windows are "this stay", and
    the CDS Hooks path, which never passed it, and the stored path must agree."""
    lactate, height = BY_KEY["lactate"].code, BY_KEY["height"].code
    inside = _stay([(HR, 90, 30), (lactate, 2.0, 180)])
    before = replace(
        inside,
        height_cm=None,
        observations=(
            (lactate, 6.0, T0 - timedelta(hours=2)),
            (height, 170.0, T0 - timedelta(days=30)),
            *inside.observations,
        ),
    )
    as_of = T0 + timedelta(hours=6)
    want = stay_features(replace(inside, height_cm=None), as_of)
    assert _same(stay_features(before, as_of), want)
    assert want["lactate_count_all"] == 1


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("glucose_max_all", 1234.0, "Glucose, highest (this stay): 1234 mg/dL"),
        ("urine_sum_24h", 2450.0, "Urine output, total (last 24 h): 2450 mL"),
        ("platelets_min_all", 999.6, "Platelets, lowest (this stay): 1000 ×10³/µL"),
        ("urine_slope_all", -1234.0, "Urine output, trend per hour (this stay): -1234 mL/h"),
        ("lactate_last_all", 4.123, "Lactate, latest (this stay): 4.12 mmol/L"),
    ],
)
def test_values_of_a_thousand_and_more_read_as_numbers(name: str, value: float, text: str) -> None:
    """An explanation's value as a clinician writes it: "1.23e+03 mg/dL" is no glucose."""
    assert describe_feature(name, value) == text


def test_a_total_over_no_measurement_is_none_charted_not_zero() -> None:
    """No urine output charted in the last 24 h is a total of 0 mL for the model, but the
    explanation "Urine output, total (last 24 h): 0 mL" reads as anuria. The factor says
    none was charted; a charted 0 mL (anuria) still reads 0 mL."""
    from pathlib import Path

    from vitalcast.modeling.registry import LoadedModel

    names = ["urine_sum_24h", "hr_last_all"]
    model = LoadedModel("v", "icu-mortality", 0.2, names, [], None, {}, Path(), "")
    none = {"urine_sum_24h": 0.0, "urine_count_24h": 0.0, "hr_last_all": 90.0}
    [factor] = model.factors(none, np.array([0.8, 0.0]), top=1)
    assert factor.text == "Urine output, total (last 24 h): none charted"
    assert factor.value == 0.0  # the value the model read
    anuric = {**none, "urine_count_24h": 3.0}
    [factor] = model.factors(anuric, np.array([0.8, 0.0]), top=1)
    assert factor.text == "Urine output, total (last 24 h): 0 mL"
    assert describe_feature("urine_sum_24h", 0.0, count=0) == (
        "Urine output, total (last 24 h): none charted"
    )


def test_a_missing_trend_or_descriptor_is_not_called_unmeasured() -> None:
    """One lactate gives no trend: "Lactate, trend per hour (this stay): not measured"
    beside "Lactate, latest: 4.1 mmol/L" told a clinician the lactate was never drawn.
    An unknown age or unit was "not measured" too."""
    one = stay_features(_stay([(BY_KEY["lactate"].code, 4.1, 60)]), T0 + timedelta(hours=6))
    assert math.isnan(one["lactate_slope_all"])
    assert describe_feature("lactate_slope_all", one["lactate_slope_all"]) == (
        "Lactate, trend per hour (this stay): too few measurements for a trend"
    )
    assert describe_feature("age_years", math.nan) == "Age: not recorded"
    assert describe_feature("unit_micu", math.nan) == "Medical ICU: not recorded"
    assert describe_feature("prev_length_of_stay", math.nan).endswith(": not recorded")
    assert describe_feature("lactate_max_24h", None) == "Lactate, highest (last 24 h): not measured"


def test_implausible_names_features_no_stay_can_have() -> None:
    """The rule the feature-vector API refuses by: a value statistic outside its variable's
    plausible range, a negative count, total or age of a measurement. Trends, derived
    indices and unknown names are not judged; every feature of a real stay passes."""
    from vitalcast.features.stay import implausible

    assert implausible("temp_max_24h", 98.6) is not None
    assert implausible("fio2_last_all", 0.4) is not None
    assert implausible("hr_last_all", 0.0) is not None  # HR 0: the low limit is an artefact
    assert implausible("urine_sum_6h", -10.0) == "must be 0 or more"
    assert implausible("height_cm", 70.0) is not None  # inches
    assert implausible("temp_slope_all", -3.0) is None
    assert implausible("pf_ratio_last", 900.0) is None
    assert implausible("no_such_feature", -1.0) is None
    stays, _labels, _groups = synthetic_stays(6)
    for stay in stays.values():
        features = stay_features(stay, T0 + timedelta(hours=24))
        assert [n for n, v in features.items() if v == v and implausible(n, v)] == []


# MIMIC-IV's care-unit names (icu/icustays.first_careunit of the demo 2.2) and the
# PhysioNet 2012 ICU type each is (None: the name does not say one).
MIMIC_UNIT_TYPES: dict[str, str | None] = {
    "Medical Intensive Care Unit (MICU)": "MICU",
    "Surgical Intensive Care Unit (SICU)": "SICU",
    "Cardiac Vascular Intensive Care Unit (CVICU)": "CSRU",
    "Coronary Care Unit (CCU)": "CCU",
    "Trauma SICU (TSICU)": "SICU",
    "Neuro Surgical Intensive Care Unit (Neuro SICU)": "SICU",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)": None,
    "Neuro Stepdown": None,
    "Neuro Intermediate": None,
}


def _unit_flags(unit: str | None) -> dict[str, float]:
    stay = replace(_stay([(HR, 90, 5)]), unit=unit)
    f = stay_features(stay, T0 + timedelta(hours=1))
    return {k: f[k] for k in ("unit_ccu", "unit_csru", "unit_micu", "unit_sicu")}


@pytest.mark.parametrize(("unit", "kind"), sorted(MIMIC_UNIT_TYPES.items()))
def test_a_unit_named_otherwise_gets_its_icu_type(unit: str, kind: str | None) -> None:
    """A MIMIC-IV stay on "Medical Intensive Care Unit (MICU)" had all four ICU-type
    flags 0, a combination no PhysioNet training stay had. Its flags are now its ICU type;
    a unit whose name says none (the mixed MICU/SICU, a step-down unit) has them unknown,
    as a stay without a unit, never all 0."""
    flags = _unit_flags(unit)
    if kind is None:
        assert all(math.isnan(v) for v in flags.values())
        assert flags.keys() == _unit_flags(None).keys()
    else:
        assert flags == {f"unit_{k.lower()}": float(k == kind) for k in ICU_TYPES.values()}


def test_icu_type_names_are_recognised_conservatively() -> None:
    """PhysioNet's own names pass unchanged; case and spacing do not matter; a name in
    "Name (ABBR)" form counts only when both halves are known and agree, so a ward with
    a familiar abbreviation in brackets is not guessed."""
    for kind in ICU_TYPES.values():
        assert icu_type(kind) == kind
    assert icu_type("  medical   intensive care unit ") == "MICU"
    assert icu_type("CVICU") == "CSRU"
    assert icu_type("Coronary Care Unit (CCU)") == "CCU"
    assert icu_type("Medical ICU (SICU)") is None  # the halves disagree
    assert icu_type("4 West (MICU)") is None  # an unknown name
    assert icu_type("MICU/SICU") is None
    assert icu_type("4 West") is None
    assert icu_type("") is None
    assert icu_type(None) is None


def test_the_unit_filter_compares_the_stored_name_not_the_icu_type() -> None:
    """The deployment's unit filter (VITALCAST_STAY_UNITS) names units as the feeds spell
    them and compares the stored name exactly: recognising "Medical Intensive Care Unit
    (MICU)" as a MICU for the model does not put it on a filter that names "MICU"."""
    from vitalcast.modeling.tasks import STAY_POPULATION

    assert STAY_POPULATION is not None
    mimic = "Medical Intensive Care Unit (MICU)"
    assert STAY_POPULATION.on_units([mimic]).exclusion("icu", 70.0, mimic) is None
    assert STAY_POPULATION.on_units(["MICU"]).exclusion("icu", 70.0, mimic) == (
        f"a stay on unit {mimic}"
    )
