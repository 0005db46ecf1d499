"""Calibration maps: which one (cross-fitted log loss) and how each is fitted and stored.

A model's raw scores rank patients; these maps turn them into risks that mean what they
say (a 20 % risk must hold one death in five). They learn from out-of-fold scores only
(:func:`~vitalcast.modeling.train.fit_model` fits the served model on all rows and the
map on what the fold models said of rows they never saw), and every map is stored as an
object scikit-learn itself evaluates (``IsotonicRegression`` knots or Platt's sigmoid),
so serving and the compiled scorer need nothing of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.calibration import (
    CalibratedClassifierCV,
    _CalibratedClassifier,
    _SigmoidCalibration,
)
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import SplineTransformer

Folds = list[tuple[np.ndarray, np.ndarray]]

# Isotonic output is kept inside [ε, 1 − ε]: a probability of exactly 0 or 1 is never
# clinically true, makes log loss infinite and explodes the challenge's H statistic (a
# decile predicted at 0 % that holds one death adds (1 − 0)² / 0.001 = 1000).
ISOTONIC_EPS = 1e-3


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration map chosen by cross-fitted validation, and its evidence."""

    method: str  # one of CALIBRATION_METHODS
    rows: str  # one map fitted on "all" landmarks, or one map per "landmark"
    oof_proba: np.ndarray  # cross-fitted calibrated out-of-fold probabilities, every row
    losses: dict[str, float]

    @property
    def label(self) -> str:
        if self.rows == "all":
            return self.method
        return f"{self.method} (one map per landmark, blended by hours since admission)"


def choose_calibration(
    scores: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    primary: np.ndarray,
    landmark: np.ndarray | None = None,
) -> CalibrationChoice:
    """A map of :data:`CALIBRATION_METHODS`, fitted on every landmark's out-of-fold scores
    together or on each landmark's own (``landmark``: each row's landmark, None when the
    task has one); chosen by cross-fitted log loss at the primary landmark.

    Why the primary landmark decides: it is the task's stated evaluation protocol (for
    icu-mortality, one prediction per stay at 48 h, as the 2012 challenge scored). Why one
    map per landmark is a candidate: one model serves every hour, but how far its raw
    scores should be stretched differs by landmark (on PhysioNet set A the out-of-fold
    Platt slope rises from about 0.8 at 6 h to 0.93 at 48 h), so a map fitted on all
    landmarks under-disperses 48 h risks and a map fitted at 48 h over-disperses 6 h risks
    (``bench/landmark_calibration.py``). Per-landmark maps are served blended by the hour
    (:class:`~vitalcast.modeling.landmark_calibration.LandmarkCalibratedClassifier`). Each
    fold's probabilities come from a calibrator that never saw that fold's rows
    (cross-fitting), and a landmark's from a map fitted on that landmark's rows only.
    """
    options = [(m, "all") for m in CALIBRATION_METHODS]
    if landmark is not None:
        options += [(m, "landmark") for m in CALIBRATION_METHODS]
    results: dict[tuple[str, str], np.ndarray] = {}
    everything = np.arange(len(y))
    for method, rows in options:
        proba = np.zeros(len(y))
        for _tr, te in folds:
            fit_idx = np.setdiff1d(everything, te)
            if rows == "all":
                proba[te] = fit_calibrator(method, scores[fit_idx], y[fit_idx]).predict(scores[te])
                continue
            assert landmark is not None
            for h in np.unique(landmark):
                fit_h, te_h = fit_idx[landmark[fit_idx] == h], te[landmark[te] == h]
                calibrator = fit_calibrator(method, scores[fit_h], y[fit_h])
                proba[te_h] = calibrator.predict(scores[te_h])
        results[(method, rows)] = proba
    losses = {
        f"{m}/{r}": float(
            log_loss(y[primary], np.clip(p[primary], 1e-15, 1 - 1e-15), labels=[0, 1])
        )
        for (m, r), p in results.items()
    }
    # Ties go to the simpler, smoother map (sigmoid, one map for all rows).
    best = min(results, key=lambda k: (losses[f"{k[0]}/{k[1]}"], k[0] != "sigmoid", k[1]))
    return CalibrationChoice(best[0], best[1], results[best], losses)


# Calibration maps the search chooses between (by cross-fitted log loss).
CALIBRATION_METHODS: tuple[str, ...] = ("sigmoid", "isotonic", "centred-isotonic", "spline")


def sklearn_method(method: str) -> str:
    """The ``CalibratedClassifierCV`` method a calibration map is stored as: the centred
    isotonic and the spline maps are ``IsotonicRegression`` objects fitted on their knots
    (same predict, same compiled form)."""
    return "isotonic" if method in ("centred-isotonic", "spline") else method


# Harrell's default for a restricted cubic spline with plenty of data: five knots at the
# 5th, 27.5th, 50th, 72.5th and 95th percentiles of the score (Regression Modeling
# Strategies, 2nd ed., section 2.4.6). Fixed, not searched.
SPLINE_KNOT_QUANTILES: tuple[float, ...] = (0.05, 0.275, 0.5, 0.725, 0.95)
# The smooth map is stored as its values on this many score quantiles, joined linearly.
SPLINE_GRID = 257


def spline_calibration(s: np.ndarray, y: np.ndarray) -> IsotonicRegression:
    """Logistic regression on a cubic spline of the score, linear beyond the outer knots.

    Why: Platt's sigmoid is too rigid for gradient-boosting scores (on PhysioNet set A its
    48 h decile H is about 40), and the isotonic maps, fitted on a few hundred deaths,
    follow the noise of their blocks: in nested set-A cross-validation
    (``bench/select_icu_serving.py``, outer seeds 7 and 11, pooled 48 h predictions on
    unseen patients) centred isotonic gave H 17.0 and 26.3 where this smooth map gave 9.5
    and 21.1, with lower log loss both in the inner cross-fitting and on the held-out
    patients (0.2934 vs 0.2972 and 0.2965 vs 0.2980). The tails are linear in log-odds,
    so the lowest and highest risks are extrapolated from the shape of the bulk rather
    than set by the handful of patients at the extremes. Unpenalised: five knots on thousands of
    rows do not overfit, and a penalty would shrink risks toward the prevalence. Averaging
    the map over 50 bootstrap refits, to carry its uncertainty into the tails, barely moved
    the lowest decile (mean risk 0.15 % → 0.22 % and 0.23 % → 0.26 %, no death there in
    either seed) and left H as it was (9.8 and 21.4), so it is not done.

    The map is stored as an ``IsotonicRegression`` fitted on its values at
    :data:`SPLINE_GRID` score quantiles (made monotone and kept inside [ε, 1 − ε]), whose
    linear interpolation is what serving and the compiled scorer already evaluate.
    """
    x = np.asarray(s, dtype=float).reshape(-1, 1)
    # Tied scores (a coarse model, a small table) share quantiles; the spline needs
    # distinct knots, and with fewer than two there is no curve to fit at all.
    knots = np.unique(np.quantile(x, SPLINE_KNOT_QUANTILES))
    if len(knots) < 2:
        return centred_isotonic(s, y)
    basis = SplineTransformer(knots=knots.reshape(-1, 1), degree=3, extrapolation="linear").fit(x)
    model = LogisticRegression(C=np.inf, max_iter=10_000).fit(basis.transform(x), y)
    grid = np.unique(np.quantile(x, np.linspace(0, 1, SPLINE_GRID)))
    values = model.predict_proba(basis.transform(grid.reshape(-1, 1)))[:, 1]
    values = np.clip(np.maximum.accumulate(values), ISOTONIC_EPS, 1 - ISOTONIC_EPS)
    return IsotonicRegression(out_of_bounds="clip", y_min=ISOTONIC_EPS, y_max=1 - ISOTONIC_EPS).fit(
        grid, values
    )


def centred_isotonic(s: np.ndarray, y: np.ndarray) -> IsotonicRegression:
    """Centred isotonic regression (Oron & Flournoy 2017), ε-bounded.

    Plain isotonic regression (pool-adjacent-violators) is a step function: every
    patient in a block gets the same risk, so ranks inside the block are lost (AUROC
    drops) and a decile boundary falling inside a large block is arbitrary. CIR keeps
    the PAV block values but places each at the mean score of its block and joins them
    linearly, so the map is strictly increasing between the outermost block centres (no
    ties there) while staying as flexible as isotonic; it is also less biased at the
    ends. Why not Platt's sigmoid: on PhysioNet set A the out-of-fold gradient-boosting
    scores at 48 h are not logistic in shape (sigmoid: slope 1.00 but decile H 39;
    centred isotonic: H 15, lower log loss). The result is stored as an
    ``IsotonicRegression`` fitted on the knots, whose linear interpolation is exactly the
    CIR map, so serving and the compiled scorer need nothing new.
    """
    order = np.argsort(s, kind="mergesort")
    xs = np.asarray(s, dtype=float)[order]
    ys = np.asarray(y, dtype=float)[order]
    pav = IsotonicRegression(y_min=ISOTONIC_EPS, y_max=1 - ISOTONIC_EPS).fit_transform(xs, ys)
    starts = np.r_[0, np.flatnonzero(np.diff(pav) != 0) + 1]
    ends = np.r_[starts[1:], len(xs)]
    knots_x = np.array([xs[a:b].mean() for a, b in zip(starts, ends, strict=True)])
    knots_y = pav[starts]
    knots_x = np.r_[xs[0], knots_x, xs[-1]]
    knots_y = np.r_[knots_y[0], knots_y, knots_y[-1]]
    return IsotonicRegression(out_of_bounds="clip", y_min=ISOTONIC_EPS, y_max=1 - ISOTONIC_EPS).fit(
        knots_x, knots_y
    )


def fit_calibrator(method: str, s: np.ndarray, y: np.ndarray) -> Any:
    """The calibrator scikit-learn's CalibratedClassifierCV would fit for ``method``
    (Platt's sigmoid with its prior-corrected targets; isotonic, here bounded by ε), or
    the centred isotonic map (:func:`centred_isotonic`) or the spline map
    (:func:`spline_calibration`)."""
    if method == "centred-isotonic":
        return centred_isotonic(s, y)
    if method == "spline":
        return spline_calibration(s, y)
    if method == "isotonic":
        return IsotonicRegression(
            out_of_bounds="clip", y_min=ISOTONIC_EPS, y_max=1 - ISOTONIC_EPS
        ).fit(s, y)
    if method == "sigmoid":
        return _SigmoidCalibration().fit(s, y)
    raise ValueError(f"unknown calibration method {method!r}")


def assemble_calibrated(pipeline: Pipeline, calibrator: Any, method: str) -> CalibratedClassifierCV:
    """A fitted ``CalibratedClassifierCV(ensemble=False)`` from a pipeline fitted on all
    rows and a calibrator fitted on out-of-fold scores.

    This is the object ``CalibratedClassifierCV(pipeline, cv=folds, ensemble=False).fit``
    builds, without refitting the fold models the search already fitted (that refit
    doubled training time), and with the calibrator fitted on the rows chosen above. It
    uses scikit-learn's private ``_CalibratedClassifier``; scikit-learn is pinned, an
    artifact from another version is refused on load, and a unit test checks the
    assembled object against ``calibrator(decision_function)``.
    """
    stored = sklearn_method(method)
    est = CalibratedClassifierCV(pipeline, method=stored, ensemble=False)
    est.classes_ = pipeline.classes_
    est.calibrated_classifiers_ = [
        _CalibratedClassifier(pipeline, [calibrator], method=stored, classes=pipeline.classes_)
    ]
    if hasattr(pipeline, "n_features_in_"):
        est.n_features_in_ = pipeline.n_features_in_
    if hasattr(pipeline, "feature_names_in_"):
        est.feature_names_in_ = pipeline.feature_names_in_
    return est
