"""The compiled scorer gives scikit-learn's probabilities, row by row, for every supported form."""

from __future__ import annotations

import math
import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from vitalcast.modeling.train import make_preprocessor
from vitalcast.serving.scorer import CompiledScorer, compile_model

TOLERANCE = 1e-9
NUMERIC = [f"num_{i}" for i in range(8)]
CATEGORICAL = ["unit", "admission"]
FEATURES = NUMERIC + CATEGORICAL
UNITS = ["MICU", "SICU", "CCU", "CSRU"]
ADMISSIONS = ["emergency", "elective", "urgent"]


def _frame(n: int, seed: int, *, held_out: bool) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, len(NUMERIC))) * np.linspace(1, 40, len(NUMERIC)) + 50
    logit = 0.08 * (num[:, 0] - 50) - 0.03 * (num[:, 3] - 50) + 0.01 * (num[:, 5] - 50)
    # Column num_7 never misses in training, so "missing-only" indicators and tree
    # missing-go-left defaults are exercised when held-out rows miss it.
    missing_cols = range(len(NUMERIC)) if held_out else range(len(NUMERIC) - 1)
    for j in missing_cols:
        num[rng.random(n) < 0.15, j] = np.nan
    frame = pd.DataFrame(num, columns=NUMERIC)
    units = np.array(UNITS + (["NICU"] if held_out else []), dtype=object)
    frame["unit"] = rng.choice(units, size=n)
    frame["admission"] = rng.choice(np.array(ADMISSIONS, dtype=object), size=n)
    # Missing categories are None, the form the loaders and LoadedModel.frame_of give the
    # model: "unit" misses in training too (the encoder fits None as a category of its
    # own), "admission" only in held-out rows (an unknown category then: all zeros).
    for column, rate in (("unit", 0.1), ("admission", 0.1 if held_out else 0.0)):
        values = frame[column].to_numpy(dtype=object)
        values[rng.random(n) < rate] = None
        frame[column] = pd.Series(values, dtype=object)
    logit = logit + np.where(frame["unit"] == "CCU", 0.8, 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(int)
    return frame, y


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    x_train, y_train = _frame(1500, 1, held_out=False)
    x_test, _ = _frame(400, 2, held_out=True)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test}


def _prep(strategy: str, indicator: bool, cat_strategy: str) -> ColumnTransformer:
    numeric = Pipeline(
        [
            ("impute", SimpleImputer(strategy=strategy, add_indicator=indicator, fill_value=-1)),
            ("scale", StandardScaler()),
        ]
    )
    # "*_none": an imputer of None itself, which replaces a missing category before the
    # encoder sees it (the default imputer, of NaN, leaves None to the encoder).
    imputer = SimpleImputer(
        strategy=cat_strategy.removesuffix("_none"),
        fill_value="missing",
        missing_values=None if cat_strategy.endswith("_none") else np.nan,
    )
    categorical = Pipeline(
        [
            ("impute", imputer),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    return ColumnTransformer(
        [("num", numeric, NUMERIC), ("cat", categorical, CATEGORICAL)], remainder="drop"
    )


ESTIMATORS = {
    "logistic": lambda: LogisticRegression(max_iter=2000),
    "hist_gb": lambda: HistGradientBoostingClassifier(max_iter=40, random_state=0),
    "random_forest": lambda: RandomForestClassifier(n_estimators=25, random_state=0),
    "extra_trees": lambda: ExtraTreesClassifier(
        n_estimators=25, max_depth=10, min_samples_leaf=3, random_state=0
    ),
}
# Each preprocessing variant is paired with each estimator across the wrapper forms below.
PREPS = [
    ("mean", True, "most_frequent"),
    ("median", False, "constant"),
    ("constant", True, "constant"),
    ("median", True, "most_frequent_none"),
]
WRAPPERS = [
    "pipeline",
    "sigmoid_ensemble",
    "isotonic_ensemble",
    "sigmoid_single",
    "isotonic_single",
    "calibrated_inside",
]


def _build(estimator: str, wrapper: str, prep_index: int) -> Any:
    prep = _prep(*PREPS[prep_index % len(PREPS)])
    est = ESTIMATORS[estimator]()
    if wrapper == "pipeline":
        return Pipeline([("prep", prep), ("model", est)])
    if wrapper == "calibrated_inside":
        return Pipeline(
            [("prep", prep), ("model", CalibratedClassifierCV(est, method="isotonic", cv=3))]
        )
    method, ensemble = wrapper.split("_")
    return CalibratedClassifierCV(
        Pipeline([("prep", prep), ("model", est)]),
        method=method,
        cv=3,
        ensemble=ensemble == "ensemble",
    )


def _reference(model: Any, frame: pd.DataFrame) -> np.ndarray:
    with warnings.catch_warnings():
        # OneHotEncoder(handle_unknown="ignore") warns about the held-out "NICU" rows.
        warnings.filterwarnings("ignore", message="Found unknown categories")
        return np.asarray(model.predict_proba(frame)[:, 1])


def _rows(scorer: CompiledScorer, frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = frame.to_dict(orient="records")
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in records
    ]


def _array(scorer: CompiledScorer, frame: pd.DataFrame) -> np.ndarray:
    return np.stack([scorer.encode(r) for r in _rows(scorer, frame)])


CASES = [
    (est, wrapper, i + j) for i, est in enumerate(ESTIMATORS) for j, wrapper in enumerate(WRAPPERS)
]


@pytest.mark.parametrize(("estimator", "wrapper", "prep_index"), CASES)
def test_compiled_equals_predict_proba_on_every_held_out_row(
    data: dict[str, Any], estimator: str, wrapper: str, prep_index: int
) -> None:
    model = _build(estimator, wrapper, prep_index).fit(data["x_train"], data["y_train"])
    expected = _reference(model, data["x_test"])
    scorer = compile_model(model, FEATURES)
    assert scorer.compiled, scorer.fallback_reason

    rows = _rows(scorer, data["x_test"])
    by_dict = np.array([scorer.score_row(r) for r in rows])
    matrix = _array(scorer, data["x_test"])
    by_array = np.array([scorer.score_row(x) for x in matrix])
    by_batch = scorer.score_batch(matrix)

    assert np.max(np.abs(by_dict - expected)) <= TOLERANCE
    assert np.max(np.abs(by_batch - expected)) <= TOLERANCE
    np.testing.assert_array_equal(by_array, by_dict)
    assert np.max(np.abs(by_batch - by_dict)) <= 1e-12
    # the held-out set really exercises the awkward inputs
    assert not data["x_train"]["num_7"].isna().any()
    assert np.isnan(matrix[:, FEATURES.index("num_7")]).any()
    assert (matrix[:, FEATURES.index("unit")] == -1).any()


@pytest.mark.parametrize("estimator", ["random_forest", "hist_gb"])
def test_estimator_without_column_transformer(data: dict[str, Any], estimator: str) -> None:
    x_train = data["x_train"][NUMERIC].to_numpy()
    model = ESTIMATORS[estimator]().fit(x_train, data["y_train"])
    x_test = data["x_test"][NUMERIC].to_numpy()
    scorer = compile_model(model, NUMERIC)
    assert scorer.compiled, scorer.fallback_reason
    expected = model.predict_proba(x_test)[:, 1]
    got = np.array([scorer.score_row(x) for x in x_test])
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert np.max(np.abs(scorer.score_batch(x_test) - expected)) <= TOLERANCE


def test_unsupported_estimator_falls_back_to_scikit_learn(data: dict[str, Any]) -> None:
    model = Pipeline(
        [
            ("prep", _prep("mean", False, "most_frequent")),
            ("model", GradientBoostingClassifier(n_estimators=10, random_state=0)),
        ]
    ).fit(data["x_train"], data["y_train"])
    scorer = compile_model(model, FEATURES)
    assert not scorer.compiled
    assert "GradientBoostingClassifier" in (scorer.fallback_reason or "")
    expected = _reference(model, data["x_test"])
    rows = _rows(scorer, data["x_test"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found unknown categories")
        got = np.array([scorer.score_row(r) for r in rows[:50]])
        batch = scorer.score_dicts(rows[:50])
    np.testing.assert_allclose(got, expected[:50], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(batch, expected[:50], rtol=0, atol=TOLERANCE)


def test_fallback_with_numeric_array_rows(data: dict[str, Any]) -> None:
    frame = data["x_train"][NUMERIC]
    model = Pipeline(
        [("impute", SimpleImputer()), ("model", GradientBoostingClassifier(n_estimators=5))]
    ).fit(frame, data["y_train"])
    scorer = compile_model(model, NUMERIC)
    assert not scorer.compiled
    x_test = data["x_test"][NUMERIC]
    expected = model.predict_proba(x_test)[:, 1]
    got = scorer.score_batch(x_test.to_numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert scorer.score_row(x_test.to_numpy()[0]) == pytest.approx(expected[0], abs=TOLERANCE)


@pytest.fixture(scope="module")
def hgb_scorer(data: dict[str, Any]) -> tuple[Any, CompiledScorer]:
    model = _build("hist_gb", "sigmoid_ensemble", 0).fit(data["x_train"], data["y_train"])
    return model, compile_model(model, FEATURES)


def test_all_missing_row_scores_like_scikit_learn(hgb_scorer: tuple[Any, CompiledScorer]) -> None:
    model, scorer = hgb_scorer
    # The served form of "nothing measured": NaN numbers, None categories (frame_of).
    frame = pd.DataFrame([{name: np.nan for name in NUMERIC}])
    for name in CATEGORICAL:
        frame[name] = pd.Series([None], dtype=object)
    expected = _reference(model, frame)[0]
    assert scorer.score_row({}) == pytest.approx(expected, abs=TOLERANCE)
    assert scorer.score_row(np.full(len(FEATURES), np.nan)) == pytest.approx(
        expected, abs=TOLERANCE
    )


def test_unknown_category_scores_as_all_zero_one_hot(
    hgb_scorer: tuple[Any, CompiledScorer],
) -> None:
    model, scorer = hgb_scorer
    row = {name: 50.0 for name in NUMERIC} | {"unit": "Burns", "admission": "elective"}
    expected = _reference(model, pd.DataFrame([row]))[0]
    assert scorer.score_row(row) == pytest.approx(expected, abs=TOLERANCE)
    code = scorer.encode(row)[FEATURES.index("unit")]
    assert code == -1
    assert scorer.categories["unit"] == sorted(UNITS)


def test_scores_are_deterministic_and_survive_pickling(
    data: dict[str, Any], hgb_scorer: tuple[Any, CompiledScorer]
) -> None:
    _, scorer = hgb_scorer
    matrix = _array(scorer, data["x_test"])
    first = scorer.score_batch(matrix)
    again = scorer.score_batch(matrix)
    np.testing.assert_array_equal(first, again)
    clone = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(clone.score_batch(matrix), first)
    assert [clone.score_row(x) for x in matrix[:20]] == [scorer.score_row(x) for x in matrix[:20]]


def test_wrong_shapes_and_names_are_refused(hgb_scorer: tuple[Any, CompiledScorer]) -> None:
    model, scorer = hgb_scorer
    with pytest.raises(ValueError, match="expected a row of 10 features"):
        scorer.score_row(np.zeros(3))
    with pytest.raises(ValueError, match=r"expected shape \(n, 10\)"):
        scorer.score_batch(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="feature_names differ"):
        compile_model(model, list(reversed(FEATURES)))


@pytest.fixture(autouse=True, scope="module")
def _one_native_thread() -> Any:
    # As in serving: OpenMP fitting on a shared 2-core machine oversubscribes badly.
    with threadpool_limits(limits=1):
        yield


def test_mostly_missing_category_compiles_and_scores_like_scikit_learn() -> None:
    """The training preprocessor on a column that is None in most rows (a first stay has
    no previous disposition): the imputer's "most frequent" is then None itself, which it
    never substitutes; the encoder fits None as a category, and the compiled scorer must
    score missing, known and unknown values as scikit-learn does."""
    rng = np.random.default_rng(4)
    n = 600
    previous = rng.choice(np.array(["home", "snf", "rehab"], dtype=object), size=n)
    previous[rng.random(n) < 0.7] = None
    frame = pd.DataFrame({"age": rng.normal(60, 15, size=n)})
    frame["previous"] = pd.Series(previous, dtype=object)
    y = (rng.random(n) < np.where(frame["previous"] == "snf", 0.5, 0.2)).astype(int)
    model = Pipeline(
        [
            ("prep", make_preprocessor(["age"], ["previous"])),
            ("model", HistGradientBoostingClassifier(max_iter=30, random_state=0)),
        ]
    ).fit(frame, y)
    assert model.named_steps["prep"].named_transformers_["cat"][0].statistics_[0] is None
    scorer = compile_model(model, ["age", "previous"])
    assert scorer.compiled, scorer.fallback_reason
    assert scorer.categories["previous"] == ["home", "rehab", "snf"]
    rows = [{"age": 70.0, "previous": p} for p in (None, "home", "snf", "hospice")]
    expected = _reference(model, pd.DataFrame(rows).astype({"previous": object}))
    got = [scorer.score_row(r) for r in rows]
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
