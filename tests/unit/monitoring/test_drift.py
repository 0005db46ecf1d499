"""Drift statistics: real shifts are flagged, sampling noise is not (measured, not assumed)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from vitalcast.monitoring import drift
from vitalcast.monitoring.drift import compare, reference_profile

Draw = Callable[[np.random.Generator, int], list[object]]


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> list[object]:
    out: list[object] = [float(v) for v in values]
    for i in np.flatnonzero(rng.random(len(out)) < rate):
        out[i] = None
    return out


# Realistic ICU inputs (PhysioNet 2012-like): lactate in mmol/L, log-normal around 1.8 and
# recorded in ~45 % of stays; heart rate charted as whole beats/min; GCS piled up at 15
# (tied values make unequal quantile bins); admission unit as a category.
def lactate(rng: np.random.Generator, n: int) -> list[object]:
    return _with_missing(rng, np.round(rng.lognormal(math.log(1.8), 0.55, n), 1), 0.55)


def heart_rate(rng: np.random.Generator, n: int) -> list[object]:
    return _with_missing(rng, np.round(rng.normal(88, 17, n)), 0.02)


def gcs(rng: np.random.Generator, n: int) -> list[object]:
    values = rng.choice([3, 6, 9, 11, 13, 14, 15], n, p=[0.08, 0.05, 0.07, 0.1, 0.12, 0.18, 0.4])
    return _with_missing(rng, values.astype(float), 0.05)


def unit(rng: np.random.Generator, n: int) -> list[object]:
    return list(rng.choice(["MICU", "SICU", "CCU", "CSRU"], n, p=[0.4, 0.25, 0.15, 0.2]))


FEATURES: dict[str, Draw] = {"lactate": lactate, "hr": heart_rate, "gcs": gcs, "unit": unit}
REFERENCE_N = 4000
WINDOWS = (100, 300, 1000)  # about a week, a month and a quarter of a 20-bed unit
REPEATS = 200


def test_profile_is_json_and_keeps_only_aggregates() -> None:
    rng = np.random.default_rng(1)
    profile = reference_profile(lactate(rng, REFERENCE_N))
    assert json.loads(json.dumps(profile)) == profile
    assert profile["kind"] == "numeric"
    assert profile["n"] == REFERENCE_N
    assert 0.5 < profile["missing_rate"] < 0.6
    assert len(profile["counts"]) == len(profile["edges"]) + 1
    assert sum(profile["counts"]) == REFERENCE_N - profile["n_missing"]
    assert len(profile["cdf_x"]) <= 99  # a percentile grid, not the values themselves
    assert reference_profile(unit(rng, 50))["kind"] == "categorical"


def test_tied_values_give_measured_unequal_bins() -> None:
    rng = np.random.default_rng(2)
    profile = reference_profile(gcs(rng, REFERENCE_N))
    present = REFERENCE_N - profile["n_missing"]
    fractions = np.array(profile["counts"]) / present
    assert len(profile["edges"]) < drift.N_BINS - 1  # deciles collapse on the ties
    assert fractions.max() > 0.3  # the GCS-15 bin holds its real share, not 10 %


def test_lactate_reported_in_mg_per_dl_is_flagged() -> None:
    # A lab switching lactate to mg/dL multiplies every value by ~9 (1 mmol/L = 9.01 mg/dL).
    rng = np.random.default_rng(3)
    profile = reference_profile(lactate(rng, REFERENCE_N))
    window = [None if v is None else 9.01 * float(v) for v in lactate(rng, 100)]  # type: ignore[arg-type]
    result = compare(profile, window)
    assert result.flagged
    assert result.severity == "major"
    assert result.psi is not None
    assert result.psi > drift.PSI_MAJOR
    assert result.ks_statistic is not None
    assert result.ks_statistic > 0.8
    assert result.js_distance is not None
    assert result.js_distance > 0.5


def test_vital_sign_no_longer_recorded_is_flagged() -> None:
    rng = np.random.default_rng(4)
    profile = reference_profile(heart_rate(rng, REFERENCE_N))
    result = compare(profile, [None] * 100)
    assert result.flagged
    assert result.severity == "major"
    assert result.missing_rate_recent == 1.0
    assert result.psi is None  # nothing left to compare the values with
    assert any("missing rate" in reason for reason in result.reasons)


def test_category_mix_change_is_flagged() -> None:
    rng = np.random.default_rng(5)
    profile = reference_profile(unit(rng, REFERENCE_N))
    window = list(rng.choice(["MICU", "CSRU", "NEWU"], 300, p=[0.2, 0.5, 0.3]))
    result = compare(profile, window)
    assert result.flagged
    assert result.ks_statistic is None  # KS is for numbers; categories get chi-square
    assert result.chi2_pvalue is not None
    assert result.chi2_pvalue < 1e-6


def test_empty_bin_stays_finite_through_the_epsilon() -> None:
    value = drift.psi(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]))
    assert math.isfinite(value)
    expected = 2 * (0.5 - drift.PSI_EPSILON) * math.log(0.5 / drift.PSI_EPSILON)
    assert value == pytest.approx(expected)


def test_malformed_profile_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="version"):
        compare({"kind": "numeric"}, [1.0])
    with pytest.raises(ValueError, match="lacks counts"):
        compare(
            {
                "version": 1,
                "kind": "numeric",
                "n": 3,
                "n_missing": 0,
                "edges": [],
                "cdf_x": [],
                "cdf": [],
            },
            [1.0],
        )


def measure_false_alarms(draw: Draw, window: int, repeats: int, seed: int) -> int:
    """Alarms raised when reference and window come from the same distribution."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(repeats):
        profile = reference_profile(draw(rng, REFERENCE_N))
        alarms += compare(profile, draw(rng, window)).flagged
    return alarms


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_false_alarm_rate_stays_below_the_derived_bound(name: str, window: int) -> None:
    # Derivation (drift.py docstring): an alarm needs the chi-square or the missing-rate
    # test at p < ALPHA, so P(alarm | no drift) <= 2·ALPHA. With REPEATS independent
    # trials, the count exceeds the 99.9th percentile of Binomial(REPEATS, 2·ALPHA) with
    # probability < 0.1 % if the bound holds; that percentile is the assertion.
    bound = 2 * drift.ALPHA
    limit = int(stats.binom.ppf(0.999, REPEATS, bound))
    alarms = measure_false_alarms(
        FEATURES[name],
        window,
        REPEATS,
        seed=WINDOWS.index(window) * 10 + sorted(FEATURES).index(name),
    )
    print(f"false alarms {name} window={window}: {alarms}/{REPEATS} = {alarms / REPEATS:.1%}")
    assert alarms <= limit, f"{alarms}/{REPEATS} false alarms; bound {bound:.0%} allows {limit}"


def test_same_distribution_gives_small_psi_as_theory_predicts() -> None:
    # Under no drift, PSI·n·m/(n+m) is approximately chi-square with (bins − 1) degrees of
    # freedom, so its mean is (bins − 1)·(1/n + 1/m). The measured mean over repeats must
    # agree within 4 standard errors.
    rng = np.random.default_rng(6)
    window = 300
    values = []
    for _ in range(REPEATS):
        ref = rng.normal(0, 1, REFERENCE_N).tolist()
        result = compare(reference_profile(ref), rng.normal(0, 1, window).tolist())
        assert result.psi is not None
        values.append(result.psi)
    scale = 1 / REFERENCE_N + 1 / window
    expected = (drift.N_BINS - 1) * scale
    se = math.sqrt(2 * (drift.N_BINS - 1)) * scale / math.sqrt(REPEATS)
    assert abs(np.mean(values) - expected) < 4 * se


def test_rare_categories_are_pooled_not_named() -> None:
    """A category held by fewer than MIN_CATEGORY_COUNT rows (an identifier that slipped
    into a feature, a one-off entry) is never named in the stored profile, and a window
    of the same population still compares as unchanged: its rare values are pooled alike."""
    rng = np.random.default_rng(9)
    ids = [f"p{i}" for i in range(300)]  # one row each, as patient ids would be
    common = unit(rng, REFERENCE_N)
    profile = reference_profile(common + ids + ["rare"] * (drift.MIN_CATEGORY_COUNT - 1))
    named = set(profile["categories"]) - {drift.OTHER}
    assert named == {"MICU", "SICU", "CCU", "CSRU"}
    assert profile["categories"][drift.OTHER] == 300 + drift.MIN_CATEGORY_COUNT - 1
    assert json.loads(json.dumps(profile)) == profile
    # Live rare values (seen in training or not) count as OTHER, as the reference did.
    window = unit(rng, 700) + [f"q{i}" for i in range(50)] + ["rare"] * 3
    result = compare(profile, window)
    assert not result.flagged, result
    assert result.psi is not None
    assert result.psi < drift.PSI_MODERATE
    assert reference_profile(["x"] * drift.MIN_CATEGORY_COUNT)["categories"] == {
        "x": drift.MIN_CATEGORY_COUNT
    }
