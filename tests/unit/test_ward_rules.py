"""The ward page's rules: trend arrows and missing key inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vitalcast.web.ward import missing_key_inputs, trend_of

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def _points(*scores: float) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(hours=4 * i), s) for i, s in enumerate(scores)]


@pytest.mark.parametrize(
    ("scores", "trend"),
    [
        ((0.10,), "none"),
        ((0.10, 0.30, 0.15), "up"),  # +5 points over the window, however it got there
        ((0.10, 0.149), "steady"),
        ((0.40, 0.35), "down"),
        ((0.40, 0.351), "steady"),
    ],
)
def test_trend_is_the_change_over_the_window(scores: tuple[float, ...], trend: str) -> None:
    assert trend_of(_points(*scores))[0] == trend


FEATURES = ["hr_last", "hr_mean_24h", "sbp_last", "map_last", "art_map_last", "lactate_max", "age"]


def test_a_variable_is_missing_only_when_all_its_features_are() -> None:
    assert missing_key_inputs(["hr_mean_24h"], FEATURES) == []
    assert missing_key_inputs(["hr_last", "hr_mean_24h"], FEATURES) == ["Heart rate"]


def test_blood_pressure_counts_cuff_or_arterial_line() -> None:
    assert missing_key_inputs(["sbp_last", "map_last"], FEATURES) == []
    assert missing_key_inputs(["sbp_last", "map_last", "art_map_last"], FEATURES) == [
        "Blood pressure"
    ]


def test_inputs_the_model_does_not_use_are_never_reported_missing() -> None:
    # FEATURES has no temperature, GCS, creatinine or white cell count.
    assert missing_key_inputs(["lactate_max"], FEATURES) == ["Lactate"]


def test_without_the_feature_list_a_missing_feature_names_its_variable() -> None:
    assert missing_key_inputs(["lactate_last", "gcs_min"], None) == ["GCS", "Lactate"]
    assert missing_key_inputs(["sbp_last"], None) == []  # other pressures may be present


def test_a_stay_never_measured_for_lactate_or_temperature_is_missing_them() -> None:
    """With the real feature set: counts (0) and sums of a never-measured variable are not
    imputed, and must not hide that the variable is missing."""
    from datetime import UTC

    from vitalcast.clinical.codes import BY_KEY
    from vitalcast.features import stay_features
    from vitalcast.features.stay import StayInput

    at = datetime(2026, 11, 28, tzinfo=UTC)
    observations = tuple(
        (BY_KEY[key].code, value, at + timedelta(hours=h))
        for h in range(0, 12, 2)
        for key, value in (("hr", 90.0), ("sbp", 120.0), ("gcs", 14.0), ("creatinine", 1.0))
    )
    stay = StayInput(
        admitted_at=at,
        age_years=60.0,
        sex="female",
        unit="MICU",
        height_cm=None,
        weight_kg=70.0,
        observations=observations,
    )
    features = stay_features(stay, at + timedelta(hours=12))
    missing = [name for name, value in features.items() if value != value]
    assert features["lactate_count_all"] == 0.0  # present, so never listed as missing
    labels = missing_key_inputs(missing, list(features))
    assert {"Lactate", "Temperature", "White cell count"} <= set(labels)
    assert not {"Heart rate", "GCS"} & set(labels)


def test_a_shown_risk_never_reads_as_two_bands() -> None:
    """Whole percentages, except where the whole number sits on a band cut-point: then
    one decimal, so the number shown and the band beside it always agree."""
    from vitalcast.modeling.registry import band_for, risk_percent

    threshold = 0.2074  # cut-points 10.37 %, 20.74 % and 41.48 %
    assert risk_percent(0.30, threshold) == "30 %"
    assert risk_percent(0.209, threshold) == "20.9 %"  # high
    assert risk_percent(0.206, threshold) == "20.6 %"  # medium
    assert risk_percent(0.206) == "21 %"  # no threshold: nothing to disagree with
    shown: dict[str, set[str]] = {}
    for i in range(10001):
        p = i / 10000
        shown.setdefault(risk_percent(p, threshold), set()).add(band_for(p, threshold))
    assert all(len(bands) == 1 for text, bands in shown.items() if "." not in text)
