"""Per-prediction explanations in log-odds: what pushed this patient's risk up or down.

Linear models: coefficient × standardised value (plus the missingness indicator's term).
Tree models: SHAP values (Lundberg et al. 2020, TreeExplainer) of the base model's raw
output. Contributions of a feature's derived columns (indicator, one-hot levels) are summed
back onto the feature. A sigmoid calibrator is linear in the raw output, so contributions
are scaled by its slope and stay exact (for forests too: their SHAP values add up to P);
an isotonic calibrator (or an uncalibrated probability-output forest) is not, so the
change from the base log-odds is shared out in proportion to the raw contributions —
exact in sum, approximate per feature (documented in the model report).
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
    """Explains a served estimator (``CalibratedClassifierCV`` or ``Pipeline``)."""

    def __init__(self, estimator: Any, feature_names: list[str]) -> None:
        self.feature_names = feature_names
        if isinstance(estimator, CalibratedClassifierCV):
            cc = estimator.calibrated_classifiers_[0]
            self.pipeline: Pipeline = cc.estimator
            self.calibrator: Any = cc.calibrators[0]
        else:
            self.pipeline, self.calibrator = estimator, None
        self.estimator = estimator
        self.prep: ColumnTransformer = self.pipeline.named_steps["prep"]
        self.model = self.pipeline.named_steps["model"]
        sources = output_sources(self.prep)
        index = {f: i for i, f in enumerate(feature_names)}
        self._agg = np.zeros((len(sources), len(feature_names)))
        for j, src in enumerate(sources):
            self._agg[j, index[src]] = 1.0
        self._tree: Any = None

    def _raw(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(base, per-column contributions, output is log-odds) in the model's raw space."""
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

    def contributions(self, X: pd.DataFrame) -> Contributions:
        """Contributions of the rows of ``X`` (raw features), through scikit-learn."""
        frame = X[self.feature_names]
        Z = np.asarray(self.prep.transform(frame), dtype=float)
        return self.contributions_of(Z, lambda: self.estimator.predict_proba(frame)[:, 1])

    def contributions_of(
        self, Z: np.ndarray, probability: Callable[[], np.ndarray]
    ) -> Contributions:
        """Contributions from rows already through the explained pipeline's preprocessor.

        ``probability`` gives the served probabilities of the same rows; it is called only
        when the calibrator is not linear in the raw output. Serving passes the compiled
        preprocessor's output and the compiled scorer's probability, so explaining a
        request costs no DataFrame (a one-row frame through the ColumnTransformer costs
        milliseconds for a few hundred columns); both are equal to scikit-learn's, which
        ``contributions`` uses.
        """
        base_raw, phi, raw_is_logodds = self._raw(Z)
        cal = self.calibrator
        if cal is not None and hasattr(cal, "a_"):
            # sklearn's sigmoid calibration: p = 1 / (1 + exp(a·f + b)), log-odds −(a·f + b).
            base = -(cal.a_ * base_raw + cal.b_)
            # Linear in the raw output, so exact whether that output is log-odds or P.
            return Contributions(base, (phi * -cal.a_) @ self._agg, self.feature_names)
        if cal is None and raw_is_logodds:
            return Contributions(base_raw, phi @ self._agg, self.feature_names)
        base_p = cal.predict(base_raw) if cal is not None else base_raw
        base = _logit(np.asarray(base_p, dtype=float))
        final = _logit(np.asarray(probability(), dtype=float))
        # Non-linear link: share (final − base) out in proportion to raw contributions.
        total = phi.sum(axis=1)
        scale = np.divide(
            final - base, total, out=np.zeros_like(total), where=np.abs(total) > 1e-12
        )
        return Contributions(base, (phi * scale[:, None]) @ self._agg, self.feature_names)


def top_factors(names: list[str], values: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` largest contributions by absolute size, largest first."""
    order = np.argsort(-np.abs(values), kind="mergesort")[:k]
    return [(names[i], float(values[i])) for i in order if not math.isclose(values[i], 0.0)]
