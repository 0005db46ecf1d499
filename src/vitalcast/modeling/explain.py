"""Per-prediction explanations in log-odds: what pushed this patient's risk up or down.

Linear models: coefficient × standardised value (plus the missingness indicator's term).
Tree models: SHAP values (Lundberg et al. 2020, TreeExplainer) of the base model's raw
output. Contributions of a feature's derived columns (indicator, one-hot levels) are summed
back onto the feature. A sigmoid calibrator is linear in the raw output, so contributions
are scaled by its slope and stay exact (for forests too: their SHAP values add up to P);
an isotonic calibrator (or an uncalibrated probability-output forest) is not, so the
change from the base log-odds is shared out in proportion to the raw contributions —
exact in sum, approximate per feature (documented in the model report).

An ensemble of calibrated members (``CalibratedClassifierCV(ensemble=True)``: one
model per cross-validation fold; training serves one refitted model instead, see
``modeling/train.py``, but a registered model built otherwise is still explained)
averages probabilities, which is not linear in any member's log-odds either; its
contributions are the members' raw contributions averaged, shared out the same way
(exact in sum). Its base is the log-odds of the members' average calibrated base
probability.

A landmark-calibrated model (``LandmarkCalibratedClassifier``: one map per landmark,
blended by the hour of the stay) has one member whose link depends on the row's hours
since admission; its base is the blended map of the base raw output at that row's hour,
and the change from it is shared out the same way (exact in sum).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from vitalcast.modeling.landmark_calibration import LandmarkCalibratedClassifier


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


@dataclass
class Contributions:
    """Log-odds decomposition: ``base + contributions.sum(axis=1) == logit(p)``."""

    base: np.ndarray  # (n,)
    values: np.ndarray  # (n, n_features), columns = feature_names
    feature_names: list[str]


def output_sources(prep: ColumnTransformer) -> list[str]:
    """The source feature of every column the preprocessor outputs."""
    n_out = sum(s.stop - s.start for s in prep.output_indices_.values())
    sources = [""] * n_out
    for name, trans, cols in prep.transformers_:
        if name == "remainder" or trans == "drop":
            continue
        sl = prep.output_indices_[name]
        cols = list(cols)
        steps = dict(trans.steps) if isinstance(trans, Pipeline) else {}
        if "onehot" in steps:
            out = [
                c for c, cats in zip(cols, steps["onehot"].categories_, strict=True) for _ in cats
            ]
        else:
            imputer = steps.get("impute")
            out = list(cols)
            if imputer is not None and imputer.indicator_ is not None:
                out += [cols[i] for i in imputer.indicator_.features_]
        sources[sl.start : sl.stop] = out
    return sources


class Explainer:
    """Explains a served estimator (``CalibratedClassifierCV``,
    ``LandmarkCalibratedClassifier`` or ``Pipeline``)."""

    def __init__(self, estimator: Any, feature_names: list[str]) -> None:
        self.feature_names = feature_names
        self.estimator = estimator
        self.landmark: LandmarkCalibratedClassifier | None = None
        if isinstance(estimator, LandmarkCalibratedClassifier):
            self.landmark = estimator
            pairs = [(estimator.estimator, None)]
        elif isinstance(estimator, CalibratedClassifierCV):
            pairs = [(cc.estimator, cc.calibrators[0]) for cc in estimator.calibrated_classifiers_]
        else:
            pairs = [(estimator, None)]
        self.members = [_Member(pipe, cal, feature_names) for pipe, cal in pairs]

    @property
    def time_feature(self) -> str | None:
        """The input whose value ``contributions_of`` needs as ``hours`` (None: none)."""
        return None if self.landmark is None else self.landmark.time_feature

    @property
    def preps(self) -> list[ColumnTransformer]:
        """Each member's fitted preprocessor, in member order (what ``contributions_of``
        expects its inputs to have been through)."""
        return [member.prep for member in self.members]

    def contributions(self, X: pd.DataFrame) -> Contributions:
        """Contributions of the rows of ``X`` (raw features), through scikit-learn."""
        X = X[self.feature_names]
        Zs = [np.asarray(member.prep.transform(X), dtype=float) for member in self.members]
        hours = None if self.landmark is None else self.landmark.hours_of(X)
        return self.contributions_of(Zs, lambda: self.estimator.predict_proba(X)[:, 1], hours)

    def contributions_of(
        self,
        Zs: list[np.ndarray],
        probability: Callable[[], np.ndarray],
        hours: np.ndarray | None = None,
    ) -> Contributions:
        """Contributions from rows already through each member's preprocessor (``Zs``).

        ``probability`` gives the served probabilities of the same rows; it is called only
        when the link from raw output to probability is not linear. Serving passes the
        compiled preprocessors' outputs and the compiled scorer's probability, so
        explaining a request costs no DataFrame (a one-row frame through the
        ColumnTransformer costs milliseconds for a few hundred columns); both equal
        scikit-learn's, which ``contributions`` uses. ``hours``: each row's value of
        :attr:`time_feature` (needed for a landmark-calibrated model; NaN = unknown).
        """
        if len(self.members) == 1:
            member = self.members[0]
            base_raw, phi, raw_is_logodds = member.raw(Zs[0])
            if self.landmark is not None:
                when = np.full(len(base_raw), np.nan) if hours is None else hours
                base = _logit(self.landmark.calibrate(base_raw, when))
                return self._shared_out(probability, base, phi @ member.agg)
            cal = member.calibrator
            if cal is not None and hasattr(cal, "a_"):
                # sklearn's sigmoid calibration: p = 1 / (1 + exp(a·f + b)), log-odds −(a·f + b).
                base = -(cal.a_ * base_raw + cal.b_)
                # Linear in the raw output, so exact whether that output is log-odds or P.
                return Contributions(base, (phi * -cal.a_) @ member.agg, self.feature_names)
            if cal is None and raw_is_logodds:
                return Contributions(base_raw, phi @ member.agg, self.feature_names)
            base = _logit(member.calibrated(base_raw))
            return self._shared_out(probability, base, phi @ member.agg)
        n_rows = len(Zs[0])
        base_p = np.zeros(n_rows)
        values = np.zeros((n_rows, len(self.feature_names)))
        for member, Z in zip(self.members, Zs, strict=True):
            base_raw, phi, _ = member.raw(Z)
            base_p += member.calibrated(base_raw)
            values += phi @ member.agg
        n = len(self.members)
        return self._shared_out(probability, _logit(base_p / n), values / n)

    def _shared_out(
        self, probability: Callable[[], np.ndarray], base: np.ndarray, raw: np.ndarray
    ) -> Contributions:
        """Non-linear link: share (final − base) out in proportion to raw contributions."""
        final = _logit(np.asarray(probability(), dtype=float))
        total = raw.sum(axis=1)
        scale = np.divide(
            final - base, total, out=np.zeros_like(total), where=np.abs(total) > 1e-12
        )
        return Contributions(base, raw * scale[:, None], self.feature_names)


class _Member:
    """One fitted pipeline (and its calibrator, if any) of the served estimator."""

    def __init__(self, pipeline: Pipeline, calibrator: Any, feature_names: list[str]) -> None:
        self.pipeline = pipeline
        self.calibrator = calibrator
        self.prep: ColumnTransformer = pipeline.named_steps["prep"]
        self.model = pipeline.named_steps["model"]
        sources = output_sources(self.prep)
        index = {f: i for i, f in enumerate(feature_names)}
        # Sums each output column's contribution back onto its source feature.
        self.agg = np.zeros((len(sources), len(feature_names)))
        for j, src in enumerate(sources):
            self.agg[j, index[src]] = 1.0
        self._tree: Any = None

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        """The member's probability for raw output ``raw``."""
        out = raw if self.calibrator is None else self.calibrator.predict(raw)
        return np.asarray(out, dtype=float)

    def raw(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(base, per-column contributions, output is log-odds) in the model's raw space,
        for rows ``Z`` already through this member's preprocessor."""
        if isinstance(self.model, LogisticRegression):
            coef = self.model.coef_[0]
            return np.full(len(Z), float(self.model.intercept_[0])), Z * coef, True
        if self._tree is None:
            with warnings.catch_warnings():
                # shap's import touches matplotlib colormap APIs slated for deprecation.
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                import shap

            self._tree = shap.TreeExplainer(self.model)
        values = self._tree.shap_values(Z, check_additivity=False)
        expected = np.asarray(self._tree.expected_value, dtype=float).ravel()
        values = np.asarray(values)
        if values.ndim == 3:  # (n, features, classes): probability-output forests
            values, base = values[:, :, 1], float(expected[-1])
        else:
            base = float(expected[0])
        logodds = hasattr(self.model, "decision_function")
        return np.full(len(Z), base), values, logodds


def top_factors(names: list[str], values: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` largest contributions by absolute size, largest first."""
    order = np.argsort(-np.abs(values), kind="mergesort")[:k]
    return [(names[i], float(values[i])) for i in order if not math.isclose(values[i], 0.0)]
