"""The compiled scoring graph: estimators, calibrators and preprocessing as numpy nodes.

Each node returns scikit-learn's *response* for the positive class, the value
``CalibratedClassifierCV`` feeds its calibrators (``sklearn/calibration.py``,
``_CalibratedClassifier.predict_proba`` calls ``_get_response_values`` with
``["decision_function", "predict_proba"]``): the decision function when the estimator has
one, else ``predict_proba[:, 1]``. :func:`positive_proba` turns a response into the
probability ``predict_proba[:, 1]`` the way the estimator itself does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from vitalcast.modeling.landmark_calibration import blend_landmark_maps
from vitalcast.serving._prep import Preprocessor
from vitalcast.serving._trees import Forest

FloatArray = NDArray[np.float64]


class Node(Protocol):
    """One compiled estimator: its positive-class response for a row or a matrix."""

    @property
    def has_decision(self) -> bool:
        """True when the response is a decision function (logit), False for a probability."""
        ...

    def response_row(self, x: FloatArray) -> float: ...

    def response_batch(self, x: FloatArray) -> FloatArray: ...


def positive_proba(node: Node, response: FloatArray) -> FloatArray:
    """``predict_proba[:, 1]`` from a node's response (binary estimators use the logistic link)."""
    return expit(response) if node.has_decision else response


@dataclass
class Linear:
    """LogisticRegression: ``decision = x @ coef_.T + intercept_``, proba = expit(decision)."""

    coef: FloatArray
    intercept: float
    has_decision: bool = True

    def response_row(self, x: FloatArray) -> float:
        return float(x @ self.coef + self.intercept)

    def response_batch(self, x: FloatArray) -> FloatArray:
        out: FloatArray = x @ self.coef + self.intercept
        return out


@dataclass
class Boosted:
    """HistGradientBoostingClassifier: raw = baseline + sum of leaf values, proba = expit(raw)."""

    forest: Forest
    baseline: float
    has_decision: bool = True

    def response_row(self, x: FloatArray) -> float:
        return self.baseline + float(self.forest.leaf_values_row(x).sum())

    def response_batch(self, x: FloatArray) -> FloatArray:
        out: FloatArray = self.baseline + self.forest.leaf_values_batch(x).sum(axis=1)
        return out


@dataclass
class Averaged:
    """Random forest / extra trees: the mean of the trees' class-1 fractions."""

    forest: Forest
    has_decision: bool = False

    def response_row(self, x: FloatArray) -> float:
        values = self.forest.leaf_values_row(x)
        return float(values.sum() / values.shape[0])

    def response_batch(self, x: FloatArray) -> FloatArray:
        values = self.forest.leaf_values_batch(x)
        out: FloatArray = values.sum(axis=1) / values.shape[1]
        return out


@dataclass
class Sigmoid:
    """Platt scaling, ``_SigmoidCalibration.predict``: ``expit(-(a * t + b))``."""

    a: float
    b: float

    def apply(self, t: FloatArray) -> FloatArray:
        out: FloatArray = expit(-(self.a * t + self.b))
        return out


@dataclass
class Isotonic:
    """``IsotonicRegression(out_of_bounds="clip").predict``: clip, then linear interpolation.

    Written as ``scipy.interpolate.interp1d(kind="linear")`` computes it (search the left
    knot, slope times offset plus the left value) so the result is the same to the last bit.
    """

    x: FloatArray
    y: FloatArray
    x_min: float
    x_max: float

    def apply(self, t: FloatArray) -> FloatArray:
        t = np.clip(t, self.x_min, self.x_max)
        if self.x.shape[0] == 1:
            return np.full(t.shape, self.y[0])
        hi = np.clip(np.searchsorted(self.x, t, side="left"), 1, self.x.shape[0] - 1)
        lo = hi - 1
        slope = (self.y[hi] - self.y[lo]) / (self.x[hi] - self.x[lo])
        out: FloatArray = slope * (t - self.x[lo]) + self.y[lo]
        return out


@dataclass
class Calibrated:
    """CalibratedClassifierCV: the mean over members of calibrator(member response).

    Binary case of ``_CalibratedClassifier.predict_proba``: the single calibrator gives
    ``proba[:, 1]``; ``CalibratedClassifierCV.predict_proba`` sums members then divides.
    """

    members: list[tuple[Node, Sigmoid | Isotonic]]
    has_decision: bool = False

    def response_row(self, x: FloatArray) -> float:
        total = 0.0
        for node, calibrator in self.members:
            total += float(calibrator.apply(np.array([node.response_row(x)]))[0])
        return total / len(self.members)

    def response_batch(self, x: FloatArray) -> FloatArray:
        total = np.zeros(x.shape[0])
        for node, calibrator in self.members:
            total += calibrator.apply(node.response_batch(x))
        out: FloatArray = total / len(self.members)
        return out


@dataclass
class LandmarkCalibrated:
    """LandmarkCalibratedClassifier: every landmark's map of the inner response, blended by
    the row's hours since admission (input column ``time_index``) with the estimator's own
    :func:`blend_landmark_maps`."""

    inner: Node
    calibrators: list[Sigmoid | Isotonic]
    landmarks: FloatArray
    time_index: int
    has_decision: bool = False

    def _blend(self, raw: FloatArray, hours: FloatArray) -> FloatArray:
        probas = np.stack([c.apply(raw) for c in self.calibrators])
        return blend_landmark_maps(probas, hours, self.landmarks)

    def response_row(self, x: FloatArray) -> float:
        raw = np.array([self.inner.response_row(x)])
        return float(self._blend(raw, x[self.time_index : self.time_index + 1])[0])

    def response_batch(self, x: FloatArray) -> FloatArray:
        return self._blend(self.inner.response_batch(x), x[:, self.time_index])


@dataclass
class Prepared:
    """A ColumnTransformer followed by the rest of its Pipeline."""

    pre: Preprocessor
    inner: Node

    @property
    def has_decision(self) -> bool:
        return self.inner.has_decision

    def response_row(self, x: FloatArray) -> float:
        return self.inner.response_row(self.pre.transform_row(x))

    def response_batch(self, x: FloatArray) -> FloatArray:
        return self.inner.response_batch(self.pre.transform_batch(x))
