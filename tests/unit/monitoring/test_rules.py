"""Alert rules: when each fires, when it stays quiet, and when it declines to judge."""

from __future__ import annotations

import math

import pytest

from vitalcast.monitoring import rules
from vitalcast.monitoring.performance import Performance

POLICY = rules.Policy()


def _perf(events: int, expected: float, slope: float | None = 1.0) -> Performance:
    return Performance(
        n=1000,
        events=events,
        threshold=0.3,
        auroc=0.8,
        observed_expected=events / expected,
        calibration_intercept=0.0,
        calibration_slope=slope,
        sensitivity=0.5,
        ppv=0.3,
        flagged=100,
    )


def test_oe_interval_is_the_poisson_interval() -> None:
    lo, hi = rules.oe_interval(100, 100.0)
    assert lo == pytest.approx(math.exp(-1.96 / 10))
    assert hi == pytest.approx(math.exp(1.96 / 10))


def test_calibration_fires_only_when_outside_range_and_beyond_noise() -> None:
    # 150 observed vs 100 expected: O/E 1.5, interval 1.28–1.76 excludes 1 -> fires.
    fired = rules.calibration_rule(_perf(150, 100.0), POLICY, task="t")
    assert [f.dedup_key for f in fired.findings] == ["calibration:t:oe"]
    # 26 vs 20: O/E 1.3 is outside the range, but its interval (0.89–1.91) holds 1.
    quiet = rules.calibration_rule(_perf(26, 20.0), POLICY, task="t")
    assert quiet.status == "ok"
    skipped = rules.calibration_rule(_perf(10, 5.0), POLICY, task="t")
    assert skipped.status == "skipped"  # 10 events < min_events


def test_calibration_slope_out_of_range_is_a_warning() -> None:
    result = rules.calibration_rule(_perf(100, 100.0, slope=0.5), POLICY, task="t")
    assert [(f.dedup_key, f.severity) for f in result.findings] == [
        ("calibration:t:slope", "warning")
    ]


def test_alert_rate_range_and_baseline_requirement() -> None:
    assert rules.alert_rate_rule(10.0, 10.0, 50, POLICY, task="t").status == "ok"
    assert rules.alert_rate_rule(25.0, 10.0, 50, POLICY, task="t").status == "firing"
    assert rules.alert_rate_rule(4.0, 10.0, 50, POLICY, task="t").status == "firing"
    assert rules.alert_rate_rule(25.0, 10.0, 3, POLICY, task="t").status == "skipped"


def test_stale_units_fire_per_unit_and_escalate() -> None:
    result = rules.stale_rule({"MICU": 60.0, "SICU": 300 * 60.0, "CCU": 2000 * 60.0}, 240)
    assert [(f.dedup_key, f.severity) for f in result.findings] == [
        ("data_stale:CCU", "critical"),
        ("data_stale:SICU", "warning"),
    ]
    assert rules.stale_rule({}, 240).status == "skipped"


def test_error_rates() -> None:
    quarantine = {"hl7": (1000, 80), "fhir": (1000, 10), "mqtt": (20, 20)}
    result = rules.error_rate_rule(quarantine, (500, 10), POLICY)
    assert sorted(f.dedup_key for f in result.findings) == [
        "error_rate:http",
        "error_rate:ingest:hl7",
    ]  # mqtt: too few records to judge
    assert rules.error_rate_rule({}, None, POLICY).status == "skipped"
    down = rules.error_rate_rule({}, None, POLICY, scrape_error="ConnectError")
    assert [f.severity for f in down.findings] == ["critical"]
