"""Outcome-joined performance and CBPE on simulated data whose answers are known."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from vitalcast.monitoring.performance import (
    Labelled,
    OutcomePoint,
    PredictionPoint,
    alert_rate_per_100_patient_days,
    by_subgroup,
    count_alerts,
    estimate_performance,
    evaluate,
    join_outcomes,
    patient_days,
    rolling,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
THRESHOLD = 0.3


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _calibrated_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # ICU-mortality-like scores: mean ≈ 0.14, long right tail.
    scores = rng.beta(0.9, 5.5, n)
    return scores, (rng.random(n) < scores).astype(int)


def test_hand_built_example_gives_exact_figures() -> None:
    scores = [0.9, 0.8, 0.4, 0.35, 0.2, 0.1, 0.05, 0.05, 0.6, 0.02, 0.15, 0.7]
    labels = [1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0]
    perf = evaluate(scores, labels, THRESHOLD)
    # Flagged (>= 0.3): 0.9,0.8,0.4,0.35,0.6,0.7 -> 4 events among 6; 5 events in all.
    assert perf.flagged == 6
    assert perf.sensitivity == pytest.approx(4 / 5)
    assert perf.ppv == pytest.approx(4 / 6)
    assert perf.observed_expected == pytest.approx(5 / sum(scores))
    # AUROC by counting: of 5 × 7 = 35 (event, non-event) pairs, the discordant ones are
    # 0.35<0.4, 0.35<0.7, 0.6<0.7, 0.15<0.2, 0.15<0.4, 0.15<0.7 -> 29/35.
    assert perf.auroc == pytest.approx(29 / 35)


def test_join_uses_only_predictions_made_before_the_outcome() -> None:
    preds = [
        PredictionPoint(1, T0, 0.2),
        PredictionPoint(1, T0 + timedelta(hours=6), 0.6),
        PredictionPoint(1, T0 + timedelta(hours=30), 0.95),  # after death: must not count
        PredictionPoint(2, T0, 0.1),
        PredictionPoint(3, T0, 0.5),  # no outcome yet
        PredictionPoint(4, T0 + timedelta(days=3), 0.4),  # only after its outcome
    ]
    outcomes = [
        OutcomePoint(1, 1, known_at=T0 + timedelta(days=2), occurred_at=T0 + timedelta(hours=24)),
        OutcomePoint(2, 0, known_at=T0 + timedelta(days=5)),
        OutcomePoint(4, 1, known_at=T0 + timedelta(days=4), occurred_at=T0 + timedelta(days=1)),
    ]
    last = {r.encounter_id: r.score for r in join_outcomes(preds, outcomes)}
    assert last == {1: 0.6, 2: 0.1}
    first = {r.encounter_id: r.score for r in join_outcomes(preds, outcomes, policy="first")}
    assert first == {1: 0.2, 2: 0.1}
    highest = {r.encounter_id: r.score for r in join_outcomes(preds, outcomes, policy="max")}
    assert highest == {1: 0.6, 2: 0.1}


def test_alerts_count_rises_not_rescorings() -> None:
    scores = [0.1, 0.35, 0.4, 0.5, 0.2, 0.31, 0.1]  # crosses up twice
    preds = [PredictionPoint(7, T0 + timedelta(hours=h), s) for h, s in enumerate(scores)]
    preds.append(PredictionPoint(8, T0, 0.9))  # above from its first score: one alert
    assert count_alerts(preds, THRESHOLD) == 3
    stays = [(T0, T0 + timedelta(days=2)), (T0 - timedelta(days=1), None)]
    days = patient_days(stays, T0, T0 + timedelta(days=3))
    assert days == pytest.approx(2 + 3)
    assert alert_rate_per_100_patient_days(3, days) == pytest.approx(60.0)
    assert alert_rate_per_100_patient_days(3, 0.0) is None


def test_calibration_slope_and_oe_recover_a_known_miscalibration() -> None:
    # Outcomes drawn from logit(P) = a + b·logit(score): slope b, intercept a by design.
    rng = np.random.default_rng(11)
    a, b, n = -0.4, 0.6, 6000
    scores = np.clip(rng.beta(0.9, 5.5, n), 1e-4, 1 - 1e-4)
    logit = np.log(scores / (1 - scores))
    truth = _sigmoid(a + b * logit)
    labels = (rng.random(n) < truth).astype(int)
    perf = evaluate(scores.tolist(), labels.tolist(), THRESHOLD)
    # Standard errors from the Fisher information of the true model (derived, not tuned).
    x = np.column_stack([np.ones(n), logit])
    cov = np.linalg.inv(x.T @ (x * (truth * (1 - truth))[:, None]))
    assert perf.calibration_intercept is not None
    assert perf.calibration_slope is not None
    assert abs(perf.calibration_slope - b) < 4 * math.sqrt(cov[1, 1])
    assert abs(perf.calibration_intercept - a) < 4 * math.sqrt(cov[0, 0])
    expected_oe = truth.sum() / scores.sum()
    se_oe = math.sqrt(np.sum(truth * (1 - truth))) / scores.sum()
    assert perf.observed_expected is not None
    assert abs(perf.observed_expected - expected_oe) < 4 * se_oe


def test_too_few_events_reports_counts_but_no_unstable_metrics() -> None:
    perf = evaluate([0.1, 0.2, 0.9, 0.3], [0, 0, 1, 0], THRESHOLD)
    assert perf.n == 4
    assert perf.events == 1
    assert perf.auroc is None
    assert perf.calibration_slope is None


def test_subgroups_and_rolling_windows_split_the_rows() -> None:
    rng = np.random.default_rng(12)
    scores, labels = _calibrated_sample(rng, 800)
    rows = [
        Labelled(
            i, T0 + timedelta(days=i % 40), float(s), int(y), {"unit": "MICU" if i % 2 else "SICU"}
        )
        for i, (s, y) in enumerate(zip(scores, labels, strict=True))
    ]
    groups = by_subgroup(rows, THRESHOLD, "unit")
    assert set(groups) == {"MICU", "SICU"}
    assert sum(g.n for g in groups.values()) == 800
    windows = rolling(
        rows,
        THRESHOLD,
        window=timedelta(days=10),
        step=timedelta(days=10),
        end=T0 + timedelta(days=40),
        periods=4,
    )
    assert [w.performance.n for w in windows] == [200, 200, 200, 200]
    assert windows[0].start == T0


def test_cbpe_matches_realised_performance_on_calibrated_scores() -> None:
    # For calibrated scores, realised TP given the scores is a sum of independent
    # Bernoulli(p_i), so the realised figures scatter around the CBPE estimate with
    # standard errors computable from the scores alone; 4 of them bound each deviation
    # (two-sided probability < 1e-4 per comparison under a normal approximation).
    # AUROC uses the Hanley–McNeil (1982) standard error, which also includes score
    # sampling and so over-covers the conditional scatter.
    rng = np.random.default_rng(13)
    errors = []
    for _ in range(50):
        scores, labels = _calibrated_sample(rng, 2000)
        est = estimate_performance(scores.tolist(), THRESHOLD)
        real = evaluate(scores.tolist(), labels.tolist(), THRESHOLD)
        flagged = scores >= THRESHOLD
        tp_var = float(np.sum(scores[flagged] * (1 - scores[flagged])))
        se_precision = math.sqrt(tp_var) / flagged.sum()
        a, b = scores[flagged].sum(), scores[~flagged].sum()
        fn_var = float(np.sum(scores[~flagged] * (1 - scores[~flagged])))
        se_recall = math.sqrt(b**2 * tp_var + a**2 * fn_var) / (a + b) ** 2
        assert est.expected_auroc is not None
        assert est.expected_precision is not None
        assert est.expected_recall is not None
        assert real.auroc is not None
        assert real.ppv is not None
        assert real.sensitivity is not None
        auc = est.expected_auroc
        n1, n0 = scores.sum(), (1 - scores).sum()
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        se_auc = math.sqrt(
            (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
        )
        assert abs(real.auroc - auc) < 4 * se_auc
        assert abs(real.ppv - est.expected_precision) < 4 * se_precision
        assert abs(real.sensitivity - est.expected_recall) < 4 * se_recall
        errors.append(real.auroc - auc)
    # No systematic bias: the mean error is within 4 standard errors of zero.
    assert abs(np.mean(errors)) < 4 * np.std(errors, ddof=1) / math.sqrt(len(errors))
    print(f"CBPE AUROC error over 50 runs: mean {np.mean(errors):+.4f}, sd {np.std(errors):.4f}")


def test_cbpe_is_labelled_as_an_estimate() -> None:
    est = estimate_performance([0.1, 0.5, 0.7], THRESHOLD).to_dict()
    assert est["kind"] == "estimate"
    assert "CBPE" in est["method"]
    assert "calibrated" in est["caveat"]
    assert evaluate([0.1, 0.5], [0, 1], THRESHOLD).to_dict()["kind"] == "realised"


def test_expected_auroc_of_certain_scores_is_exact() -> None:
    # Scores of 0 or 1 are certain outcomes: expected AUROC is then 1 exactly.
    assert estimate_performance([0.0, 0.0, 1.0, 1.0], 0.5).expected_auroc == pytest.approx(1.0)
    # All equal scores carry no ranking: 0.5.
    assert estimate_performance([0.3] * 10, 0.5).expected_auroc == pytest.approx(0.5)
