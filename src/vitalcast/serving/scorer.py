"""The serving hot path: a fitted scikit-learn model compiled into a lean scorer at load time.

Calling ``pipeline.predict_proba`` on one row costs milliseconds, almost all of it in
DataFrame construction, ColumnTransformer dispatch and input validation; the arithmetic is
microseconds. :func:`compile_model` reads the fitted parameters once (imputer statistics,
scaler means and scales, one-hot categories, linear coefficients, every tree node,
calibrators) into numpy arrays, and :class:`CompiledScorer` evaluates them with a few numpy
calls per row and no per-request DataFrame.

Compiled, and tested equal to ``predict_proba(X)[:, 1]`` within 1e-9 on held-out rows:

* ``Pipeline([ColumnTransformer, estimator])`` with numeric blocks of
  ``SimpleImputer`` (NaN, any strategy, with or without ``add_indicator``) then
  ``StandardScaler``, categorical blocks of ``SimpleImputer`` then
  ``OneHotEncoder(handle_unknown="ignore")``, ``remainder="drop"`` or ``"passthrough"``
  columns; or the estimator alone on the numeric feature matrix;
* estimators: binary ``LogisticRegression``, ``HistGradientBoostingClassifier`` (numeric
  splits), ``RandomForestClassifier`` and ``ExtraTreesClassifier``;
* ``CalibratedClassifierCV`` (sigmoid or isotonic, ``ensemble`` True or False) around the
  whole pipeline or around the final estimator;
* ``LandmarkCalibratedClassifier`` (one sigmoid or isotonic map per landmark, blended by
  the row's hours since admission) around the whole pipeline.

Anything else is scored by scikit-learn itself (``CompiledScorer.compiled`` is False and
``fallback_reason`` says why), so a new model type is never refused, only slower.

Row encoding. The array form of a row is a float vector in ``feature_names`` order;
numeric features hold the value (NaN = missing). A feature listed in
``CompiledScorer.categories`` holds the *index* of its category in that list (NaN =
missing, any other number = an unknown category, which one-hot encodes as all zeros like
``handle_unknown="ignore"``). The dict form takes raw values (category strings, ``None``
for missing) and is encoded through the same tables.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from vitalcast.modeling.landmark_calibration import LandmarkCalibratedClassifier
from vitalcast.serving._fuse import fuse_calibrated
from vitalcast.serving._nodes import (
    Averaged,
    Boosted,
    Calibrated,
    Isotonic,
    LandmarkCalibrated,
    Linear,
    Node,
    Prepared,
    Sigmoid,
    positive_proba,
)
from vitalcast.serving._prep import (
    Preprocessor,
    Uncompilable,
    compile_column_transformer,
)
from vitalcast.serving._trees import flatten_forest, flatten_hist_gradient_boosting

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

__all__ = ["CompiledScorer", "compile_model"]


@dataclass
class _Compiler:
    feature_names: list[str]
    preprocessors: list[Preprocessor]

    def node(self, est: Any, *, raw_input: bool) -> Node:
        if isinstance(est, Pipeline):
            steps = [s for _, s in est.steps if s is not None and s != "passthrough"]
            if not steps:
                raise Uncompilable("empty Pipeline")
            if isinstance(steps[0], ColumnTransformer):
                if not raw_input:
                    raise Uncompilable("a ColumnTransformer after another transformer")
                pre = compile_column_transformer(steps[0], self.feature_names)
                self.preprocessors.append(pre)
                return Prepared(pre, self._chain(steps[1:]))
            return self._chain(steps, raw_input=raw_input)
        if isinstance(est, CalibratedClassifierCV):
            return self._calibrated(est, raw_input=raw_input)
        if isinstance(est, LandmarkCalibratedClassifier):
            return self._landmark_calibrated(est, raw_input=raw_input)
        return self._estimator(est)

    def _chain(self, steps: list[Any], *, raw_input: bool = False) -> Node:
        if len(steps) != 1:
            names = ", ".join(type(s).__name__ for s in steps)
            raise Uncompilable(f"Pipeline steps after the ColumnTransformer: {names}")
        return self.node(steps[0], raw_input=raw_input)

    def _estimator(self, est: Any) -> Node:
        if len(getattr(est, "classes_", [])) != 2:
            raise Uncompilable(f"{type(est).__name__} is not a fitted binary classifier")
        if type(est) is LogisticRegression:
            coef = np.asarray(est.coef_, dtype=np.float64)
            if coef.shape[0] != 1:
                raise Uncompilable("LogisticRegression with more than one coefficient row")
            return Linear(coef[0].copy(), float(est.intercept_[0]))
        if type(est) is HistGradientBoostingClassifier:
            forest, baseline = flatten_hist_gradient_boosting(est)
            return Boosted(forest, baseline)
        if type(est) in (RandomForestClassifier, ExtraTreesClassifier):
            return Averaged(flatten_forest(est))
        raise Uncompilable(f"estimator {type(est).__name__} is not compiled")

    def _calibrated(self, est: CalibratedClassifierCV, *, raw_input: bool) -> Node:
        if len(est.classes_) != 2:
            raise Uncompilable("CalibratedClassifierCV on more than two classes")
        members: list[tuple[Node, Sigmoid | Isotonic]] = []
        for member in est.calibrated_classifiers_:
            if member.method not in ("sigmoid", "isotonic") or len(member.calibrators) != 1:
                raise Uncompilable(f"calibration method {member.method!r} is not compiled")
            node = self.node(member.estimator, raw_input=raw_input)
            members.append((node, _calibrator(member.calibrators[0])))
        return fuse_calibrated(Calibrated(members))

    def _landmark_calibrated(self, est: LandmarkCalibratedClassifier, *, raw_input: bool) -> Node:
        if len(est.classes_) != 2:
            raise Uncompilable("LandmarkCalibratedClassifier on more than two classes")
        if not raw_input or est.time_feature not in self.feature_names:
            raise Uncompilable(f"landmark calibration without its {est.time_feature} input")
        return LandmarkCalibrated(
            self.node(est.estimator, raw_input=raw_input),
            [_calibrator(c) for c in est.calibrators],
            np.asarray(est.landmarks_h, dtype=np.float64),
            self.feature_names.index(est.time_feature),
        )


def _calibrator(cal: Any) -> Sigmoid | Isotonic:
    """A fitted Platt (``_SigmoidCalibration``) or clipping isotonic map, compiled."""
    if isinstance(cal, IsotonicRegression):
        if cal.out_of_bounds != "clip":
            raise Uncompilable("isotonic calibrator without out_of_bounds='clip'")
        return Isotonic(
            np.asarray(cal.X_thresholds_, dtype=np.float64),
            np.asarray(cal.y_thresholds_, dtype=np.float64),
            float(cal.X_min_),
            float(cal.X_max_),
        )
    if hasattr(cal, "a_") and hasattr(cal, "b_"):
        return Sigmoid(float(cal.a_), float(cal.b_))
    raise Uncompilable(f"calibrator {type(cal).__name__} is not compiled")


class CompiledScorer:
    """Scores rows of one fitted binary classifier; see the module docstring for encodings.

    Attributes:
        feature_names: input feature order of the array form.
        compiled: True when scoring runs on the compiled numpy form, False when it calls
            scikit-learn (then ``fallback_reason`` says why).
        categories: for each categorical feature, its fitted categories (the array form
            holds an index into this list).
    """

    def __init__(
        self,
        estimator: Any,
        feature_names: Sequence[str],
        node: Node | None,
        categories: dict[str, list[Any]],
        fallback_reason: str | None = None,
        frame_of: Callable[[list[Mapping[str, Any]]], pd.DataFrame] | None = None,
    ) -> None:
        self.estimator = estimator
        self._frame_of = frame_of
        self.feature_names = list(feature_names)
        self.n_features = len(self.feature_names)
        self.compiled = node is not None
        self.fallback_reason = fallback_reason
        self.categories = categories
        self._node = node
        self.category_codes = {
            name: {c: i for i, c in enumerate(cats)} for name, cats in categories.items()
        }
        self.feature_index = {name: i for i, name in enumerate(self.feature_names)}

    # -- encoding ------------------------------------------------------------------------

    def encode(self, values: Mapping[str, Any]) -> FloatArray:
        """The array form of a dict row: absent keys and None are missing (NaN).

        Keys that are not features are ignored here; request validation (see
        ``vitalcast.serving.fastpath``) rejects them before scoring.
        """
        x = np.full(self.n_features, math.nan)
        codes = self.category_codes
        for i, name in enumerate(self.feature_names):
            value = values.get(name)
            if value is None:
                continue
            table = codes.get(name)
            x[i] = float(value) if table is None else table.get(value, -1)
        return x

    def _as_row(self, values: FloatArray | Mapping[str, Any]) -> FloatArray:
        if isinstance(values, Mapping):
            return self.encode(values)
        x = np.asarray(values, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"expected a row of {self.n_features} features, got {x.shape}")
        return x

    # -- scoring -------------------------------------------------------------------------

    def score_row(self, values: FloatArray | Mapping[str, Any]) -> float:
        """``predict_proba(row)[0, 1]`` for one row (array form or dict form)."""
        if self._node is None:
            if isinstance(values, Mapping):
                return float(self._sklearn_dict_proba(values))
            return float(self._sklearn_proba(self._as_row(values)[None, :])[0])
        x = self._as_row(values)
        node = self._node
        if node.has_decision:
            return float(positive_proba(node, np.array([node.response_row(x)]))[0])
        return node.response_row(x)

    def score_batch(self, rows: FloatArray) -> FloatArray:
        """``predict_proba(rows)[:, 1]`` for a 2-D array of rows in array form."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {x.shape}")
        if self._node is None:
            return self._sklearn_proba(x)
        return positive_proba(self._node, self._node.response_batch(x))

    def score_dicts(self, rows: Sequence[Mapping[str, Any]]) -> FloatArray:
        """Scores of dict rows (the batch endpoint's form)."""
        if not rows:
            return np.empty(0)
        if self._node is None:
            if self._frame_of is not None:
                frame = self._frame_of(list(rows))
                return np.asarray(self.estimator.predict_proba(frame)[:, 1], dtype=np.float64)
            return np.array([self._sklearn_dict_proba(r) for r in rows])
        return self.score_batch(np.stack([self.encode(r) for r in rows]))

    def _sklearn_proba(self, x: FloatArray) -> FloatArray:
        # Fallback: hand scikit-learn the frame it was fitted on. Only numeric features are
        # representable in the array form here (self.categories is empty in fallback).
        data: Any = x
        if hasattr(self.estimator, "feature_names_in_"):
            data = pd.DataFrame(x, columns=self.feature_names)
        proba = np.asarray(self.estimator.predict_proba(data), dtype=np.float64)
        return proba[:, 1]

    def _sklearn_dict_proba(self, values: Mapping[str, Any]) -> float:
        if self._frame_of is not None:
            return float(self.estimator.predict_proba(self._frame_of([values]))[0, 1])
        row = {n: math.nan if values.get(n) is None else values[n] for n in self.feature_names}
        data: Any = pd.DataFrame([row], columns=self.feature_names)
        if not hasattr(self.estimator, "feature_names_in_"):
            data = data.to_numpy(dtype=np.float64)
        return float(self.estimator.predict_proba(data)[0, 1])


def compile_model(
    estimator: Any,
    feature_names: Sequence[str],
    frame_of: Callable[[list[Mapping[str, Any]]], pd.DataFrame] | None = None,
) -> CompiledScorer:
    """Compile a fitted binary classifier whose input columns are ``feature_names``.

    ``frame_of`` builds the DataFrame the estimator was fitted on from dict rows (a
    registered model's ``LoadedModel.frame_of``: numeric and categorical inputs, and
    their missing values, in the training frames' form); the scikit-learn fallback uses
    it for dict rows, so a model that is not compiled is still served what it was
    trained on.

    Never raises for an unsupported model: it returns a scorer that calls scikit-learn and
    says so in ``compiled``/``fallback_reason`` (and logs it once at load time).
    """
    names = list(feature_names)
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and list(fitted_names) != names:
        raise ValueError("feature_names differ from the columns the model was fitted on")
    compiler = _Compiler(names, [])
    try:
        node = compiler.node(estimator, raw_input=True)
        categories = _shared_categories(compiler.preprocessors, names)
    except Uncompilable as exc:
        logger.warning("model not compiled, scoring falls back to scikit-learn: %s", exc)
        return CompiledScorer(
            estimator, names, None, {}, fallback_reason=str(exc), frame_of=frame_of
        )
    return CompiledScorer(estimator, names, node, categories, frame_of=frame_of)


def _shared_categories(pres: list[Preprocessor], names: list[str]) -> dict[str, list[Any]]:
    """Category lists per input column; every member preprocessor must agree on them.

    Calibration members fitted on different folds each carry their own OneHotEncoder; the
    array form uses one index per category, so their category lists must be identical.
    """
    out: dict[str, list[Any]] = {}
    for pre in pres:
        for src, cat in pre.categorical.items():
            seen = out.setdefault(names[src], cat.categories)
            if seen != cat.categories:
                raise Uncompilable(f"calibration folds fitted different categories for {cat.name}")
    for pre in pres:
        if set(pre.categorical) != {names.index(n) for n in out}:
            raise Uncompilable("calibration folds encode different categorical columns")
    return out
