"""Model fitting: candidate pipelines, grouped cross-validation, calibration, threshold.

What we serve is what we validated: one ``Pipeline(prep, model)`` whose preprocessing
(median imputation with missingness indicators, scaling, one-hot) is fitted inside each
training fold only, wrapped in ``CalibratedClassifierCV(ensemble=False)`` so that the
calibrator learns from out-of-fold scores and the served base model is fitted on all rows.

Search budget (fixed, documented, seeded — a retrain on the same data gives the same
model): the candidates of :data:`SEARCH_BUDGET`, each scored by out-of-fold AUROC over
``n_splits`` folds grouped by patient and stratified by label; then sigmoid vs isotonic
calibration chosen by cross-fitted out-of-fold log loss.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from vitalcast.modeling.datasets import Dataset
from vitalcast.modeling.evaluate import auroc, choose_threshold
from vitalcast.modeling.tasks import Task, TaskError

logger = logging.getLogger(__name__)

DEFAULT_SEED = 2012
Folds = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    """One point of the search budget."""

    name: str
    family: str  # "lr", "hgb" or "rf"
    params: dict[str, Any] = field(default_factory=dict)


# The whole search budget: five fits per candidate (one per fold), nothing adaptive.
SEARCH_BUDGET: tuple[CandidateSpec, ...] = (
    CandidateSpec("logistic-l2-C0.05", "lr", {"C": 0.05}),
    CandidateSpec(
        "hgb-slow",
        "hgb",
        {
            "learning_rate": 0.04,
            "max_iter": 350,
            "max_leaf_nodes": 15,
            "min_samples_leaf": 50,
            "l2_regularization": 1.0,
            "max_features": 0.5,
        },
    ),
    CandidateSpec(
        "random-forest",
        "rf",
        {"n_estimators": 300, "min_samples_leaf": 10, "max_features": "sqrt"},
    ),
)
FAST_BUDGET: tuple[CandidateSpec, ...] = (
    CandidateSpec("logistic-l2-C0.1", "lr", {"C": 0.1}),
    CandidateSpec(
        "hgb-fast",
        "hgb",
        {"learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 7, "min_samples_leaf": 20},
    ),
)


def make_preprocessor(
    numeric: list[str], categorical: list[str], *, indicators: bool = True
) -> ColumnTransformer:
    """Imputation (+ missingness indicators), scaling and one-hot: the compilable shape.

    ``keep_empty_features``: a column empty in one training fold keeps its place (imputed
    0), so every fitted preprocessor has the same output layout. Trees get no indicator
    columns: the per-window ``count`` features already say what was
    not measured, and doubling the columns doubles histogram-building time.
    """
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(
            (
                "num",
                Pipeline(
                    [
                        (
                            "impute",
                            SimpleImputer(
                                strategy="median",
                                add_indicator=indicators,
                                keep_empty_features=True,
                            ),
                        ),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    if categorical:
        parts.append(
            (
                "cat",
                Pipeline(
                    [
                        (
                            "impute",
                            SimpleImputer(strategy="most_frequent", keep_empty_features=True),
                        ),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def make_model(spec: CandidateSpec, seed: int) -> BaseEstimator:
    if spec.family == "lr":
        return LogisticRegression(max_iter=3000, **spec.params)
    if spec.family == "hgb":
        return HistGradientBoostingClassifier(
            early_stopping=False, random_state=seed, **spec.params
        )
    if spec.family == "rf":
        return RandomForestClassifier(random_state=seed, **spec.params)
    raise ValueError(f"unknown model family {spec.family!r}")


def make_pipeline(
    spec: CandidateSpec, numeric: list[str], categorical: list[str], seed: int
) -> Pipeline:
    return Pipeline(
        [
            ("prep", make_preprocessor(numeric, categorical, indicators=spec.family == "lr")),
            ("model", make_model(spec, seed)),
        ]
    )


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> Folds:
    """Folds that never split a patient, with similar event rates."""
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(np.zeros(len(y)), y, groups)]


def raw_scores(estimator: Any, X: Any) -> np.ndarray:
    """What CalibratedClassifierCV calibrates: decision_function, else P(y=1)."""
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(X), dtype=float)
    return np.asarray(estimator.predict_proba(X)[:, 1], dtype=float)


@dataclass
class TrainResult:
    """The fitted, calibrated estimator and how it was chosen."""

    estimator: CalibratedClassifierCV
    candidate: CandidateSpec
    calibration: str
    threshold: float
    numeric: list[str]
    categorical: list[str]
    oof_proba: np.ndarray  # cross-fitted calibrated out-of-fold probabilities, every row
    search: list[dict[str, Any]]
    seconds: float
    n_splits: int
    seed: int

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + self.categorical


def check_trainable(ds: Dataset, task: Task) -> None:
    """Refuse data a model cannot learn from, with a message saying why."""
    classes = set(np.unique(ds.y).tolist())
    if classes != {0, 1}:
        raise TaskError(
            f"{task.name}: the label has {len(classes)} class(es) {sorted(classes)}; training"
            " needs both outcomes (0 and 1)"
        )
    if min(int(ds.y.sum()), int(len(ds.y) - ds.y.sum())) < 10:
        raise TaskError(f"{task.name}: fewer than 10 rows of the rarer outcome; too few to learn")


def fit_model(
    ds: Dataset,
    task: Task,
    *,
    seed: int = DEFAULT_SEED,
    n_splits: int = 5,
    budget: tuple[CandidateSpec, ...] = SEARCH_BUDGET,
) -> TrainResult:
    """Search the budget, calibrate the winner, and choose its operating threshold."""
    check_trainable(ds, task)
    started = time.perf_counter()
    numeric = [c for c in ds.numeric if ds.X[c].notna().any()]
    categorical = [c for c in ds.categorical if ds.X[c].notna().any()]
    X = ds.X[numeric + categorical]
    y = ds.y
    n_groups = len(np.unique(ds.groups))
    n_splits = max(2, min(n_splits, n_groups, int(min(y.sum(), len(y) - y.sum()))))
    folds = grouped_folds(y, ds.groups, n_splits, seed)
    search: list[dict[str, Any]] = []
    best: tuple[float, CandidateSpec, np.ndarray] | None = None
    for spec in budget:
        t0 = time.perf_counter()
        oof = np.zeros(len(y))
        for tr, te in folds:
            pipe = make_pipeline(spec, numeric, categorical, seed).fit(X.iloc[tr], y[tr])
            oof[te] = raw_scores(pipe, X.iloc[te])
        score = auroc(y, oof)
        search.append(
            {"candidate": spec.name, "oof_auroc": score, "seconds": time.perf_counter() - t0}
        )
        logger.info("candidate %s: out-of-fold AUROC %.4f", spec.name, score)
        if best is None or score > best[0]:
            best = (score, spec, oof)
    assert best is not None
    _score, spec, oof = best
    method, oof_proba, losses = _choose_calibration(oof, y, folds)
    for row in search:
        if row["candidate"] == spec.name:
            row["calibration_log_loss"] = losses
    estimator = CalibratedClassifierCV(
        make_pipeline(spec, numeric, categorical, seed), method=method, cv=folds, ensemble=False
    ).fit(X, y)
    rows = ds.rows_at(task.primary_landmark_h)
    threshold = choose_threshold(y[rows], oof_proba[rows], task.threshold_rule)
    return TrainResult(
        estimator=estimator,
        candidate=spec,
        calibration=method,
        threshold=threshold,
        numeric=numeric,
        categorical=categorical,
        oof_proba=oof_proba,
        search=search,
        seconds=time.perf_counter() - started,
        n_splits=n_splits,
        seed=seed,
    )


def _choose_calibration(
    scores: np.ndarray, y: np.ndarray, folds: Folds
) -> tuple[str, np.ndarray, dict[str, float]]:
    """Sigmoid or isotonic, by cross-fitted log loss on out-of-fold scores.

    Isotonic can return exactly 0 or 1 on sparse tails, which log loss (and the H
    statistic) punish; sigmoid cannot. Letting validation decide avoids a fixed belief.
    """
    results: dict[str, np.ndarray] = {}
    for method in ("sigmoid", "isotonic"):
        proba = np.zeros(len(y))
        for _tr, te in folds:
            fit_idx = np.setdiff1d(np.arange(len(y)), te)
            proba[te] = _fit_calibrator(method, scores[fit_idx], y[fit_idx])(scores[te])
        results[method] = proba
    losses = {
        m: float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))
        for m, p in results.items()
    }
    method = min(losses, key=lambda m: (losses[m], m != "sigmoid"))
    return method, results[method], losses


def _fit_calibrator(method: str, s: np.ndarray, y: np.ndarray) -> Any:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
        return iso.predict
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(s.reshape(-1, 1), y)
    return lambda v: lr.predict_proba(np.asarray(v).reshape(-1, 1))[:, 1]


def logit(p: float) -> float:
    q = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(q / (1 - q))
