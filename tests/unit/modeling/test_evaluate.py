"""Metrics against hand-derived values (the challenge's H and Event 1 included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vitalcast.modeling import evaluate as ev


def test_hosmer_lemeshow_h_by_hand() -> None:
    # 20 patients -> ten groups of two, sorted by risk.
    p = np.repeat(np.linspace(0.05, 0.95, 10), 2)
    y = np.array([0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1])
    expected = 0.0
    for g in range(10):
        c = p[2 * g]
        o = y[2 * g : 2 * g + 2].sum()
        expected += (o - 2 * c) ** 2 / (2 * c * (1 - c) + 0.001)
    expected /= 0.95 - 0.05
    assert ev.hosmer_lemeshow_h(y, p) == pytest.approx(expected)


def test_event1_and_confusion() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.1, 0.1])
    c = ev.confusion(y, p, 0.5)  # TP 2, FP 1, FN 1, TN 4
    assert c["sensitivity"] == pytest.approx(2 / 3)
    assert c["ppv"] == pytest.approx(2 / 3)
    assert c["specificity"] == pytest.approx(4 / 5)
    assert c["npv"] == pytest.approx(4 / 5)
    assert c["event1"] == pytest.approx(2 / 3)
    assert c["net_benefit"] == pytest.approx(2 / 8 - 1 / 8 * 1.0)


def test_threshold_maximises_min_se_ppv() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.1, 0.1])
    t = ev.choose_threshold(y, p, "max_min_se_ppv")
    # Candidates: 0.9 -> min(1/3, 1); 0.8 -> min(2/3, 1); 0.7 -> min(2/3, 2/3);
    # 0.2 -> min(1, 3/4) = 0.75 (best); 0.1 -> min(1, 3/8).
    assert t == pytest.approx(0.2)
    assert ev.confusion(y, p, t)["event1"] == pytest.approx(0.75)


def test_discrimination_matches_sklearn_and_calibration_of_a_calibrated_model() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.9, 20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    assert ev.auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert ev.calibration_slope(y, p) == pytest.approx(1.0, abs=0.06)
    assert ev.calibration_intercept(y, p) == pytest.approx(0.0, abs=0.05)
    assert ev.ece(y, p) < 0.02
    # Over-confident predictions (logits doubled) have slope about 1/2.
    logit = np.log(p / (1 - p))
    sharp = 1 / (1 + np.exp(-2 * logit))
    assert ev.calibration_slope(y, sharp) == pytest.approx(0.5, abs=0.04)


def test_calibration_fits_converge_where_risks_are_near_zero() -> None:
    """A small group whose risks are all near 0 and half of whom died (a model moved to a
    sicker site): the plain Newton iteration overshot and ran off to an intercept of
    about −5·10⁸ (an overflow in `evaluate`). The intercept is the root of
    Σ expit(a + logit p) = Σ y, found here independently by bisection."""
    from scipy.optimize import brentq
    from scipy.special import expit, logit

    p = np.r_[np.full(20, 0.005), np.full(20, 0.02)]
    y = np.r_[np.ones(8), np.zeros(12), np.ones(12), np.zeros(8)]
    exact = brentq(lambda a: float(expit(a + logit(p)).sum() - y.sum()), -50, 50)
    assert ev.calibration_intercept(y, p) == pytest.approx(exact, abs=1e-6)
    assert math.isfinite(ev.calibration_slope(y, p))


def test_bootstrap_intervals_bracket_the_estimate() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 500)
    y = (rng.random(500) < p).astype(int)
    m = ev.evaluate(y, p, 0.5, n_boot=100)
    lo, hi = m["auroc_ci"]
    assert lo < m["auroc"] < hi
    assert m["n"] == 500
    assert m["prevalence"] == pytest.approx(y.mean())
    assert math.isfinite(m["hl_h"])


def test_hosmer_lemeshow_h_drops_the_remainder_like_lemeshow_m() -> None:
    # lemeshow.m: M = floor(N/10) rows per group; the N mod 10 highest-risk rows are unused.
    p = np.concatenate([np.repeat(np.linspace(0.05, 0.95, 10), 2), [0.99, 0.99, 0.99]])
    y = np.concatenate(
        [np.array([0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1]), [0, 0, 0]]
    )
    assert ev.hosmer_lemeshow_h(y, p) == pytest.approx(ev.hosmer_lemeshow_h(y[:20], p[:20]))
    # A model that predicts 0 for a group with deaths explodes H (why 0/1 must never appear).
    q = p[:20].copy()
    q[2:4] = 0.0  # a group holding one death predicted at exactly 0
    assert ev.hosmer_lemeshow_h(y[:20], q) > 10 * ev.hosmer_lemeshow_h(y[:20], p[:20])


def test_h_if_calibrated_separates_noise_from_miscalibration() -> None:
    # 4000 patients with ICU-like risks (mostly low, a long upper tail).
    rng = np.random.default_rng(11)
    p = rng.beta(0.6, 3.5, 4000)
    y = (rng.random(4000) < p).astype(int)  # outcomes drawn from the risks: calibrated
    fair = ev.evaluate(y, p, 0.5, n_boot=0)
    median, p95 = fair["hl_h_calibrated"]
    assert 0 < median < p95
    assert fair["hl_h"] < p95
    assert fair["hl_h_p"] > 0.05
    # The same outcomes scored with the lower half's risks divided by five: those
    # patients die five times as often as predicted.
    low = p < np.median(p)
    shrunk = np.where(low, p / 5, p)
    off = ev.evaluate(y, shrunk, 0.5, n_boot=0)
    assert off["hl_h"] > off["hl_h_calibrated"][1]
    assert off["hl_h_p"] < 0.01


def test_h_interval_holds_its_estimate_where_the_percentile_one_did_not() -> None:
    """Resampling inflates H (duplicated patients add noise to every decile), so its
    percentile interval sat above the estimate; the basic interval is centred back on it,
    and a clearly miscalibrated model's interval stays above a calibrated one's."""
    rng = np.random.default_rng(11)
    p = rng.beta(0.6, 3.5, 4000)
    y = (rng.random(4000) < p).astype(int)
    fair = ev.evaluate(y, p, 0.5, n_boot=100)
    draws = []
    for _ in range(100):
        idx = rng.integers(0, 4000, 4000)
        draws.append(ev.hosmer_lemeshow_h(y[idx], p[idx]))
    assert np.mean(np.asarray(draws) > fair["hl_h"]) > 0.8  # the inflation, measured
    lo, hi = fair["hl_h_ci"]
    assert 0 <= lo <= fair["hl_h"] <= hi
    off = ev.evaluate(y, np.where(p < np.median(p), p / 5, p), 0.5, n_boot=100)
    assert off["hl_h_ci"][0] > hi


def test_ece_interval_reaches_a_calibrated_models_true_ece() -> None:
    """ECE is inflated by resampling as H is: for calibrated predictions (true ECE about
    0.001) the percentile interval lies wholly above the truth; the basic one reaches it."""
    rng = np.random.default_rng(11)
    p = rng.beta(0.6, 3.5, 4000)
    y = (rng.random(4000) < p).astype(int)
    fair = ev.evaluate(y, p, 0.5, n_boot=100, seed=2)
    draws = np.array(
        [ev.ece(y[i], p[i]) for i in (rng.integers(0, 4000, 4000) for _ in range(100))]
    )
    assert np.quantile(draws, 0.025) > 0.002  # the percentile interval's lower end
    lo, hi = fair["ece_ci"]
    assert lo <= 0.002 < hi
    off = ev.evaluate(y, p / 1.3, 0.5, n_boot=100, seed=2)  # risks a quarter too low
    assert off["ece_ci"][0] > hi


def test_intervals_resample_patients_not_rows() -> None:
    """Each patient's outcome repeated over three rows: resampling rows treats the copies
    as independent and narrows the interval; resampling patients does not."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.6, 600)
    y = (rng.random(600) < p).astype(int)
    rows_p, rows_y = np.repeat(p, 3), np.repeat(y, 3)
    patients = np.repeat(np.arange(600), 3)
    by_row = ev.evaluate(rows_y, rows_p, 0.3, n_boot=200)
    by_patient = ev.evaluate(rows_y, rows_p, 0.3, groups=patients, n_boot=200)
    once = ev.evaluate(y, p, 0.3, n_boot=200)

    def width(m: dict[str, object]) -> float:
        lo, hi = m["auroc_ci"]  # type: ignore[misc]
        return float(hi - lo)

    assert width(by_patient) > 1.4 * width(by_row)
    assert width(by_patient) == pytest.approx(width(once), rel=0.25)


def test_small_subgroups_are_reported_by_size_only() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.5, 400)
    y = np.zeros(400, dtype=int)
    y[:60] = 1  # group "a": 60 events; group "b" below: 3 events
    labels = np.array(["a"] * 300 + ["b"] * 100)
    y[300:303] = 1
    out = ev.subgroup_metrics(y, p, labels, 0.3)
    assert {"auroc", "prevalence", "ppv"} <= set(out["a"])
    assert out["b"] == {"n": 100.0}


def test_decision_curve_is_net_benefit_at_each_threshold() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(1, 6, 2000)
    y = (rng.random(2000) < p).astype(int)
    prevalence = y.mean()
    curve = ev.decision_curve(y, p)
    assert [round(t, 2) for t, _, _ in curve] == [round(0.01 * k, 2) for k in range(1, 51)]
    for t, model, treat_all in curve:
        # The same rule as the operating point's net benefit (p >= t), and treat-all by hand.
        assert model == pytest.approx(ev.confusion(y, p, t)["net_benefit"], abs=1e-12)
        assert treat_all == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t))
    # A model that knows the outcome gains the whole prevalence at every threshold; one
    # that flags no one gains nothing.
    assert all(m == pytest.approx(prevalence) for _, m, _ in ev.decision_curve(y, y.astype(float)))
    assert all(m == 0 for _, m, _ in ev.decision_curve(y, np.zeros(len(y))))
    # A calibrated model beats treating all at every threshold above the lowest risks.
    assert all(m >= a for t, m, a in curve if t >= 0.05)
