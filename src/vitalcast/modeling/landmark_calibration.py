"""Calibration that knows the hour of the stay: one map per landmark, blended in between.

One gradient-boosting model scores every hour of an ICU stay, but how far its raw score
should be stretched into a probability depends on how much of the stay it has seen: on
PhysioNet set A the map fitted at 48 h, applied at 6 h, gives a calibration slope of 0.80
and a challenge H of 82, where a map fitted on the 6 h rows gives 0.98 and 6
(``bench/landmark_calibration.py``). So the served model keeps one calibration map per
training landmark and, for a row scored ``h`` hours after admission, blends the maps of
the two landmarks around ``h``, linearly in log-odds::

    logit p(s, h) = (1 − w) · logit p_a(s) + w · logit p_b(s),   w = (h − a) / (b − a)

for landmarks ``a ≤ h ≤ b``. At a landmark the risk is exactly that landmark's map (what
cross-validation calibrated), and between landmarks it moves continuously with ``h``, so
a patient's risk does not jump when the clock crosses 12 h. Cross-fitted on set A at hours
no map was fitted at, the blend stays calibrated (slope 1.00, 0.98, 1.02 and H 7, 11, 17
at 9, 18 and 36 h, against 0.81, 0.83, 0.95 and 81, 64, 28 for the 48 h map alone).
Before the first landmark the first map applies, after the last the last (the model was
never trained beyond it); a row without a time (``NaN``) gets the last landmark's map,
the task's primary protocol. A map can also sit at a landmark the model is not trained
at (``Task.calibration_landmarks_h``: icu-mortality's 3 h, whose rows are scored out of
fold and calibrated but never fitted on); without it, the 6 h map applied at 3 h ran
somewhat high on set A (slope 0.95, intercept −0.12, H 35). Before the first map the risk
is an extrapolation, and the patient page marks it as provisional.

:func:`blend_landmark_maps` is the only implementation of the blend: the scikit-learn
estimator here, the compiled serving scorer (``serving/_nodes.py``) and the explanations
all call it, so the three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

FloatArray = NDArray[np.float64]

# The input column that tells a landmark-calibrated model how far into the stay a row is
# (``features/stay.py``; equal to the landmark on every training row).
TIME_FEATURE = "hours_since_admission"

# Probabilities are blended in log-odds; the calibrators already keep theirs inside
# [1e-3, 1 − 1e-3] (isotonic, spline) or strictly inside (0, 1) (sigmoid), so this clip
# only guards the logarithm.
_EPS = 1e-12


def blend_landmark_maps(
    probas: FloatArray, hours: FloatArray, landmarks: Sequence[float] | FloatArray
) -> FloatArray:
    """Blend per-landmark probabilities by each row's hours since admission.

    Args:
        probas: ``(len(landmarks), n)``: row ``k`` holds landmark ``k``'s map applied to
            the ``n`` raw scores.
        hours: ``(n,)`` hours since admission of each row (NaN: unknown).
        landmarks: increasing landmark times in hours.

    Returns:
        ``(n,)`` probabilities, equal to landmark ``k``'s map where ``hours`` equals it.
    """
    marks = np.asarray(landmarks, dtype=np.float64)
    p = np.clip(np.asarray(probas, dtype=np.float64), _EPS, 1 - _EPS)
    if marks.shape[0] == 1:
        first: FloatArray = p[0].copy()
        return first
    h = np.asarray(hours, dtype=np.float64)
    h = np.where(np.isnan(h), marks[-1], np.clip(h, marks[0], marks[-1]))
    upper = np.clip(np.searchsorted(marks, h, side="right"), 1, marks.shape[0] - 1)
    lower = upper - 1
    w = (h - marks[lower]) / (marks[upper] - marks[lower])
    cols = np.arange(h.shape[0])
    logit = np.log(p) - np.log1p(-p)
    z = (1.0 - w) * logit[lower, cols] + w * logit[upper, cols]
    out: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return out


def raw_scores(estimator: Any, X: Any) -> FloatArray:
    """What a calibrator reads: the decision function, else P(y=1), as scikit-learn's
    ``CalibratedClassifierCV`` does (training's out-of-fold scores come from here too)."""
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(X), dtype=np.float64)
    return np.asarray(estimator.predict_proba(X)[:, 1], dtype=np.float64)


class LandmarkCalibratedClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted binary classifier with one calibration map per landmark, blended by time.

    Built already fitted by training (``modeling/train.py``): ``estimator`` is the
    pipeline fitted on every row, ``calibrators`` the maps fitted on each landmark's
    out-of-fold scores (objects with ``predict(raw) -> P``: ``IsotonicRegression`` or
    scikit-learn's ``_SigmoidCalibration``), ``method`` how they were fitted, and
    ``time_feature`` the input column holding hours since admission.
    """

    def __init__(
        self,
        estimator: Any,
        landmarks_h: Sequence[float],
        calibrators: Sequence[Any],
        method: str,
        time_feature: str = TIME_FEATURE,
    ) -> None:
        self.estimator = estimator
        self.landmarks_h = landmarks_h
        self.calibrators = calibrators
        self.method = method
        self.time_feature = time_feature

    def fit(self, X: Any, y: Any) -> LandmarkCalibratedClassifier:
        """Not refitted here: the maps come from cross-validation (see ``train.py``)."""
        raise NotImplementedError(
            "LandmarkCalibratedClassifier is assembled from fitted parts by training"
        )

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.estimator.classes_)

    @property
    def feature_names_in_(self) -> np.ndarray:
        return np.asarray(self.estimator.feature_names_in_)

    @property
    def n_features_in_(self) -> int:
        return int(self.estimator.n_features_in_)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def calibrate(self, raw: FloatArray, hours: FloatArray) -> FloatArray:
        """Calibrated probabilities of raw scores ``raw`` at ``hours`` since admission."""
        raw = np.asarray(raw, dtype=np.float64)
        probas = np.stack([np.asarray(c.predict(raw), dtype=np.float64) for c in self.calibrators])
        return blend_landmark_maps(probas, hours, self.landmarks_h)

    def hours_of(self, X: Any) -> FloatArray:
        """Each row's hours since admission (NaN when missing)."""
        if isinstance(X, pd.DataFrame):
            column = X[self.time_feature]
        else:
            names = list(self.feature_names_in_)
            column = np.asarray(X)[:, names.index(self.time_feature)]
        return np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)

    def predict_proba(self, X: Any) -> FloatArray:
        p1 = self.calibrate(raw_scores(self.estimator, X), self.hours_of(X))
        out: FloatArray = np.column_stack([1.0 - p1, p1])
        return out

    def predict(self, X: Any) -> np.ndarray:
        labels: np.ndarray = np.asarray(self.classes_)
        chosen: np.ndarray = labels[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]
        return chosen
