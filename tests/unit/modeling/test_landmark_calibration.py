"""Calibration by the hour of the stay: per-landmark maps, blended, compiled and explained."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from tests.modeling_data import assert_served_factors_match_sklearn, synthetic_stays
from vitalcast.modeling.calibration import choose_calibration, fit_calibrator
from vitalcast.modeling.datasets import Dataset, timeseries_dataset
from vitalcast.modeling.explain import Explainer
from vitalcast.modeling.landmark_calibration import (
    TIME_FEATURE,
    LandmarkCalibratedClassifier,
    blend_landmark_maps,
)
from vitalcast.modeling.tasks import get_task
from vitalcast.modeling.train import (
    FAST_BUDGET,
    CandidateSpec,
    fit_model,
    grouped_folds,
    grouped_folds_around,
    make_pipeline,
)
from vitalcast.serving.scorer import compile_model

TASK = get_task("icu-mortality")
LANDMARKS = (6.0, 12.0, 48.0)


def test_blend_is_each_landmarks_map_at_its_hour_and_continuous_between() -> None:
    rng = np.random.default_rng(3)
    probas = rng.uniform(0.01, 0.99, size=(3, 5))
    for k, h in enumerate(LANDMARKS):
        np.testing.assert_allclose(
            blend_landmark_maps(probas, np.full(5, h), LANDMARKS), probas[k], rtol=1e-12
        )
    # Halfway between 12 h and 48 h: the mean of the two maps' log-odds.
    halfway = blend_landmark_maps(probas, np.full(5, 30.0), LANDMARKS)
    np.testing.assert_allclose(logit(halfway), (logit(probas[1]) + logit(probas[2])) / 2)
    # No jump when the clock crosses a landmark.
    for h in LANDMARKS[1:-1]:
        before = blend_landmark_maps(probas, np.full(5, h - 1e-6), LANDMARKS)
        after = blend_landmark_maps(probas, np.full(5, h + 1e-6), LANDMARKS)
        np.testing.assert_allclose(before, after, atol=1e-6)
    # Before the first landmark the first map, after the last (or unknown) the last.
    np.testing.assert_allclose(blend_landmark_maps(probas, np.zeros(5), LANDMARKS), probas[0])
    for h in (72.0, np.nan):
        np.testing.assert_allclose(
            blend_landmark_maps(probas, np.full(5, h), LANDMARKS), probas[2], rtol=1e-12
        )


def test_blend_moves_monotonically_between_two_maps() -> None:
    probas = np.array([[0.1], [0.4]])
    hours = np.linspace(6, 12, 25)
    out = blend_landmark_maps(np.repeat(probas, 25, axis=1), hours, (6.0, 12.0))
    assert (np.diff(out) > 0).all()
    assert out[0] == pytest.approx(0.1)
    assert out[-1] == pytest.approx(0.4)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    stays, labels, groups = synthetic_stays(240)
    return timeseries_dataset(TASK, stays, labels, groups, landmarks_h=LANDMARKS)


def _landmark_model(ds: Dataset, method: str) -> tuple[list[str], LandmarkCalibratedClassifier]:
    cols = [c for c in ds.numeric if ds.X[c].notna().any()]
    spec = CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7})
    pipe = make_pipeline(spec, cols, [], 0).fit(ds.X[cols], ds.y)
    scores = pipe.decision_function(ds.X[cols])
    landmark = ds.meta["landmark_h"].to_numpy()
    maps = [fit_calibrator(method, scores[landmark == h], ds.y[landmark == h]) for h in LANDMARKS]
    return cols, LandmarkCalibratedClassifier(pipe, LANDMARKS, maps, method, TIME_FEATURE)


def _rows_at_other_hours(ds: Dataset, cols: list[str]) -> pd.DataFrame:
    """Training rows with their clock moved between, before, after and off the landmarks."""
    X = ds.X[cols].iloc[:60].copy()
    X[TIME_FEATURE] = np.resize([3.0, 6.0, 9.0, 12.0, 30.0, 48.0, 60.0, np.nan], len(X))
    return X


@pytest.mark.parametrize("method", ["sigmoid", "spline"])
def test_landmark_model_is_each_landmarks_map_and_compiles_to_the_same_numbers(
    dataset: Dataset, method: str
) -> None:
    cols, est = _landmark_model(dataset, method)
    X = dataset.X[cols]
    scores = est.estimator.decision_function(X)
    landmark = dataset.meta["landmark_h"].to_numpy()
    p = est.predict_proba(X)[:, 1]
    for h, cal in zip(LANDMARKS, est.calibrators, strict=True):
        rows = landmark == h
        np.testing.assert_allclose(p[rows], cal.predict(scores[rows]), rtol=1e-9)
    scorer = compile_model(est, cols)
    assert scorer.compiled, scorer.fallback_reason
    moved = _rows_at_other_hours(dataset, cols)
    for frame in (X, moved):
        want = est.predict_proba(frame)[:, 1]
        np.testing.assert_allclose(scorer.score_batch(frame.to_numpy()), want, atol=1e-9)
        for row, expected in zip(frame.to_numpy()[:10], want[:10], strict=False):
            assert scorer.score_row(row) == pytest.approx(expected, abs=1e-9)


def test_landmark_model_explanations_add_up_at_any_hour(dataset: Dataset) -> None:
    cols, est = _landmark_model(dataset, "spline")
    X = _rows_at_other_hours(dataset, cols)
    contrib = Explainer(est, cols).contributions(X)
    p = est.predict_proba(X)[:, 1]
    np.testing.assert_allclose(
        contrib.base + contrib.values.sum(axis=1), logit(np.clip(p, 1e-6, 1 - 1e-6)), atol=1e-6
    )
    # The base is the blended map at each row's own hour: it moves with the clock.
    assert len(np.unique(np.round(contrib.base, 9))) > 1


def test_served_landmark_factors_equal_the_scikit_learn_path(dataset: Dataset) -> None:
    cols, est = _landmark_model(dataset, "spline")
    rows = _rows_at_other_hours(dataset, cols).iloc[:24].to_dict("records")
    assert_served_factors_match_sklearn(est, cols, [{}, *rows])


def test_choice_takes_per_landmark_maps_when_the_score_means_more_later() -> None:
    """Scores whose risk slope grows with the landmark (as a stay's data accumulates):
    one map for all rows under-disperses the primary landmark, so the cross-fitted
    choice must be per-landmark maps, and their out-of-fold risks calibrated at each."""
    rng = np.random.default_rng(5)
    n = 3000
    landmark = np.repeat([6.0, 48.0], n)
    s = rng.normal(size=2 * n)
    y = (rng.random(2 * n) < expit(np.where(landmark == 6.0, 0.4, 1.6) * s - 1.5)).astype(int)
    groups = np.tile(np.arange(n), 2)  # the same patient at both landmarks
    folds = grouped_folds(y, groups, 5, 0)
    primary = landmark == 48.0
    choice = choose_calibration(s, y, folds, primary, landmark)
    assert choice.rows == "landmark", choice.losses
    assert choice.losses[f"{choice.method}/landmark"] < choice.losses[f"{choice.method}/all"]
    for h in (6.0, 48.0):
        rows = landmark == h
        assert abs(choice.oof_proba[rows].mean() - y[rows].mean()) < 0.01
    # Without landmarks there is one map for everything.
    assert choose_calibration(s, y, folds, primary).rows == "all"


def test_folds_around_calibration_rows_keep_the_training_folds_and_patients_whole() -> None:
    rng = np.random.default_rng(2)
    n = 400
    groups = np.repeat(np.arange(n // 2), 2)  # two stays per patient
    y = (rng.random(n) < 0.2).astype(int)
    every = np.ones(n, dtype=bool)
    assert [(list(a), list(b)) for a, b in grouped_folds_around(y, groups, every, 5, 0)] == [
        (list(a), list(b)) for a, b in grouped_folds(y, groups, 5, 0)
    ]
    # Each stay gains an earlier, calibration-only row; one patient has only such rows.
    y_all = np.r_[y, y, [0, 1]]
    groups_all = np.r_[groups, groups, [n, n]]
    fits = np.r_[every, ~every, [False, False]]
    folds = grouped_folds_around(y_all, groups_all, fits, 5, 0)
    alone = grouped_folds(y, groups, 5, 0)
    for (tr, te), (tr0, te0) in zip(folds, alone, strict=True):
        np.testing.assert_array_equal(tr[fits[tr]], tr0)
        np.testing.assert_array_equal(te[fits[te]], te0)
        assert not set(groups_all[tr]) & set(groups_all[te])
    tested = np.sort(np.concatenate([te for _tr, te in folds]))
    np.testing.assert_array_equal(tested, np.arange(len(y_all)))


def test_calibration_only_rows_get_a_map_but_never_train_the_model() -> None:
    """icu-mortality's 3 h rows are scored out of fold and calibrated, never fitted on:
    changing every 3 h feature value leaves the fitted model and its search as they were."""
    task = get_task("icu-mortality")
    assert task.calibration_landmarks_h == (3.0,)
    stays, labels, groups = synthetic_stays(240)
    ds = timeseries_dataset(task, stays, labels, groups)
    early = np.asarray(ds.meta["landmark_h"] == 3.0)
    assert early.any()
    np.testing.assert_array_equal(ds.training_rows(task), ~early)
    first = fit_model(ds, task, budget=FAST_BUDGET, n_splits=3)
    assert ((first.oof_proba[early] > 0) & (first.oof_proba[early] < 1)).all()
    noisy = ds.X.copy()
    cols = [c for c in noisy.columns if c != TIME_FEATURE and noisy[c].notna().any()]
    noisy.loc[early, cols] = noisy.loc[early, cols] * 3 + 1
    second = fit_model(replace(ds, X=noisy), task, budget=FAST_BUDGET, n_splits=3)
    X = ds.X[first.feature_names]
    np.testing.assert_array_equal(
        _pipeline(first.estimator).decision_function(X),
        _pipeline(second.estimator).decision_function(X),
    )
    assert [r["oof_auroc"] for r in first.search] == [r["oof_auroc"] for r in second.search]


def _pipeline(estimator: Any) -> Any:
    """The fitted model inside a served estimator (whichever calibration was chosen)."""
    if isinstance(estimator, LandmarkCalibratedClassifier):
        return estimator.estimator
    return estimator.calibrated_classifiers_[0].estimator
