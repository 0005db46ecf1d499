"""Training, registry and explanations on small seeded synthetic stays (no database)."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV

from tests.modeling_data import T0, assert_served_factors_match_sklearn, synthetic_stays
from vitalcast.errors import VitalcastError
from vitalcast.features import stay_features
from vitalcast.modeling.calibration import CALIBRATION_METHODS
from vitalcast.modeling.datasets import Dataset, timeseries_dataset
from vitalcast.modeling.explain import Explainer
from vitalcast.modeling.registry import (
    ArtifactIntegrityError,
    IncompatibleArtifactError,
    band_for,
    load_model,
)
from vitalcast.modeling.service import TrainOutcome, train_and_register
from vitalcast.modeling.tasks import TaskError, get_task
from vitalcast.modeling.train import FAST_BUDGET, CandidateSpec, grouped_folds, make_pipeline

TASK = get_task("icu-mortality")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    stays, labels, groups = synthetic_stays(240)
    return timeseries_dataset(TASK, stays, labels, groups, landmarks_h=(12.0, 48.0))


def _train(ds: Dataset, registry: Path) -> TrainOutcome:
    return train_and_register(
        TASK.name,
        session=None,
        registry_dir=registry,
        dataset=ds,
        budget=FAST_BUDGET,
        n_splits=3,
        n_boot=20,
    )


@pytest.fixture(scope="module")
def trained(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainOutcome:
    return _train(dataset, tmp_path_factory.mktemp("registry"))


def test_metric_floor_and_sidecar(trained: TrainOutcome) -> None:
    assert trained.metrics["auroc"] > 0.75  # synthetic risk is learnable; chance is 0.5
    sidecar = json.loads((trained.artifact_path.parent / "model.json").read_text())
    assert sidecar["sha256"] == trained.sha256
    assert sidecar["task"] == "icu-mortality"
    assert set(sidecar["versions"]) >= {"python", "sklearn", "numpy"}
    assert sidecar["threshold"] == trained.threshold
    assert len(sidecar["training_data_fingerprint"]) == 64
    ref = sidecar["reference"]["features"]["hr_last_all"]
    assert ref["missing_rate"] == 0
    assert ref["kind"] == "numeric"  # a monitoring.drift reference profile
    assert sum(ref["counts"]) == ref["n"] - ref["n_missing"]
    assert sidecar["model"]["calibration"] in {"sigmoid", "isotonic"}
    assert set(sidecar["metrics"]["by_landmark"]) == {"12", "48"}


def test_retrain_gives_the_same_model(
    dataset: Dataset, trained: TrainOutcome, tmp_path: Path
) -> None:
    again = _train(dataset, tmp_path)
    a = load_model(trained.artifact_path, trained.sha256)
    b = load_model(again.artifact_path, again.sha256)
    assert a.sidecar["training_data_fingerprint"] == b.sidecar["training_data_fingerprint"]
    np.testing.assert_array_equal(a.predict_proba(dataset.X), b.predict_proba(dataset.X))
    assert again.threshold == trained.threshold


def test_save_load_predict_round_trip(dataset: Dataset, trained: TrainOutcome) -> None:
    model = load_model(trained.artifact_path, trained.sha256)
    # The served object and a row scored through the online path agree exactly.
    stays, _l, _g = synthetic_stays(240)
    features = stay_features(stays["s3"], T0 + timedelta(hours=12))
    row = dataset.X.iloc[[int(np.flatnonzero(dataset.meta["stay_id"] == "s3")[0])]]
    assert model.predict_proba_row(features) == model.predict_proba(row)[0]
    p = model.predict_proba_row(features)
    assert 0 < p < 1
    assert model.band(p) in {"low", "medium", "high", "critical"}


def test_altered_artifact_is_refused(trained: TrainOutcome, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    data = bytearray(trained.artifact_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / trained.artifact_path.name).write_bytes(bytes(data))
    (folder / "model.json").write_bytes((trained.artifact_path.parent / "model.json").read_bytes())
    with pytest.raises(ArtifactIntegrityError, match="does not match") as exc:
        load_model(folder, trained.sha256)
    assert isinstance(exc.value, VitalcastError)


def test_other_sklearn_version_is_refused(trained: TrainOutcome, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / trained.artifact_path.name).write_bytes(trained.artifact_path.read_bytes())
    sidecar = json.loads((trained.artifact_path.parent / "model.json").read_text())
    sidecar["versions"]["sklearn"] = "1.2.0"
    (folder / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(IncompatibleArtifactError, match=r"scikit-learn 1\.2\.0"):
        load_model(folder, trained.sha256)


def test_one_class_label_is_refused(dataset: Dataset, tmp_path: Path) -> None:
    one = Dataset(
        dataset.X, np.zeros_like(dataset.y), dataset.groups, dataset.meta, dataset.numeric
    )
    with pytest.raises(TaskError, match="1 class"):
        _train(one, tmp_path)


def test_explanations_are_clinical_and_add_up(trained: TrainOutcome) -> None:
    model = load_model(trained.artifact_path, trained.sha256)
    stays, _l, _g = synthetic_stays(240)
    features = stay_features(stays["s5"], T0 + timedelta(hours=48))
    factors = model.explain(features, top=5)
    assert 1 <= len(factors) <= 5
    assert all(f.direction == ("raises" if f.contribution > 0 else "lowers") for f in factors)
    assert all("_" not in f.label for f in factors)
    contrib = model.explainer.contributions(model.frame(features))
    p = model.predict_proba_row(features)
    assert contrib.base[0] + contrib.values[0].sum() == pytest.approx(
        math.log(p / (1 - p)), abs=1e-6
    )


def _calibrated(
    dataset: Dataset, spec: CandidateSpec, method: str, ensemble: bool = False
) -> tuple[list[str], CalibratedClassifierCV]:
    cols = [c for c in dataset.numeric if dataset.X[c].notna().any()]
    folds = grouped_folds(dataset.y, dataset.groups, 3, 0)
    est = CalibratedClassifierCV(
        make_pipeline(spec, cols, [], 0), method=method, cv=folds, ensemble=ensemble
    ).fit(dataset.X[cols], dataset.y)
    return cols, est


def test_spline_calibration_follows_a_shape_the_sigmoid_cannot() -> None:
    """The spline map recovers a risk curve that is not logistic in the score (here
    curved in log-odds), where Platt's sigmoid cannot; it stays monotone, inside
    [ε, 1 − ε], and keeps calibration in the large."""
    from vitalcast.modeling.calibration import ISOTONIC_EPS, fit_calibrator

    def truth(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(x + 0.8 * np.maximum(x, 0) ** 2 - 2.5)))

    rng = np.random.default_rng(7)
    s = rng.normal(size=20_000)
    y = (rng.random(s.size) < truth(s)).astype(int)
    spline, sigmoid = fit_calibrator("spline", s, y), fit_calibrator("sigmoid", s, y)
    grid = np.linspace(*np.quantile(s, [0.02, 0.98]), 500)
    spline_error = np.abs(spline.predict(grid) - truth(grid)).mean()
    sigmoid_error = np.abs(sigmoid.predict(grid) - truth(grid)).mean()
    assert spline_error < sigmoid_error / 2, (spline_error, sigmoid_error)
    wide = spline.predict(np.linspace(s.min() - 1, s.max() + 1, 2001))
    assert (np.diff(wide) >= 0).all()
    assert wide.min() >= ISOTONIC_EPS
    assert wide.max() <= 1 - ISOTONIC_EPS
    assert abs(spline.predict(s).mean() - y.mean()) < 0.005


@pytest.mark.parametrize("values", [(-2.0, -1.0, 0.5), (-1.0, 1.0), (0.3,)])
def test_spline_calibration_fits_tied_scores(values: tuple[float, ...]) -> None:
    """A coarse model gives few distinct scores, so several knot quantiles coincide (and
    a constant score leaves no curve at all): the map still fits, monotone, inside
    [ε, 1 − ε], and keeps calibration in the large."""
    from vitalcast.modeling.calibration import ISOTONIC_EPS, fit_calibrator

    rng = np.random.default_rng(3)
    weights = np.linspace(3, 1, len(values))
    s = rng.choice(np.array(values), size=2000, p=weights / weights.sum())
    y = (rng.random(s.size) < 1 / (1 + np.exp(-(s - 1)))).astype(int)
    spline = fit_calibrator("spline", s, y)
    p = spline.predict(np.sort(s))
    assert (np.diff(p) >= 0).all()
    assert p.min() >= ISOTONIC_EPS
    assert p.max() <= 1 - ISOTONIC_EPS
    assert abs(spline.predict(s).mean() - y.mean()) < 0.01


@pytest.mark.parametrize(
    ("spec", "method", "ensemble"),
    [
        (CandidateSpec("lr", "lr", {"C": 0.1}), "sigmoid", False),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "sigmoid", False),
        (CandidateSpec("rf", "rf", {"n_estimators": 20, "min_samples_leaf": 5}), "sigmoid", False),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "isotonic", False),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "sigmoid", True),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "isotonic", True),
        (CandidateSpec("lr", "lr", {"C": 0.1}), "isotonic", True),
    ],
)
def test_contributions_sum_to_the_log_odds(
    dataset: Dataset, spec: CandidateSpec, method: str, ensemble: bool
) -> None:
    cols, est = _calibrated(dataset, spec, method, ensemble)
    X = dataset.X[cols].iloc[:40]
    contrib = Explainer(est, cols).contributions(X)
    p = np.clip(est.predict_proba(X)[:, 1], 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(
        contrib.base + contrib.values.sum(axis=1), np.log(p / (1 - p)), atol=1e-6
    )


def test_bands_are_relative_to_the_threshold() -> None:
    t = 0.2
    assert [band_for(p, t) for p in (0.05, 0.1, 0.2, 0.39, 0.4, 0.9)] == [
        "low",
        "medium",
        "high",
        "high",
        "critical",
        "critical",
    ]
    assert band_for(0.7, 0.6) == "high"
    assert band_for(0.8, 0.6) == "critical"


def test_report_is_generated_from_the_sidecar(trained: TrainOutcome) -> None:
    from vitalcast.modeling.report import render_html, render_markdown

    sidecar = json.loads((trained.artifact_path.parent / "model.json").read_text())
    page = render_html(sidecar)
    assert trained.version in page
    assert "data:image/png;base64," in page
    # The decision curve is kept with the model's curves and plotted beside them.
    decision = sidecar["metrics"]["curves"]["decision"]
    assert len(decision) == 50
    assert "decision-curve plots" in page
    assert f"{sidecar['metrics']['auroc']:.3f}" in page
    at_12 = sidecar["metrics"]["by_landmark"]["12"]
    assert (
        f"<td>12</td><td>{at_12['n']}</td><td>{at_12['auroc']:.3f}</td>"
        f"<td>{at_12['brier']:.3f}</td><td>{at_12['calibration_slope']:.3f}</td>"
        f"<td>{at_12['calibration_intercept']:.3f}</td>"
    ) in page
    assert "vitalcast scores only ICU and hospital stays of patients aged 15 or over" in page
    md = render_markdown(sidecar)
    assert f"| AUROC | {sidecar['metrics']['auroc']:.3f} |" in md
    assert "Population: vitalcast scores only ICU and hospital stays of patients aged 15" in md
    # The measured H beside the H that calibrated predictions would score by chance.
    median = sidecar["metrics"]["hl_h_calibrated"][0]
    assert "H from sampling noise alone" in md
    assert f"median {median:.1f}" in md
    assert f"median {median:.1f}" in page


def test_landmark_rows_are_in_time_order() -> None:
    from vitalcast.modeling.report import render_markdown

    # As stored: JSON with sorted keys puts "12" before "6".
    rows = {h: {"n": 1, "auroc": 0.8, "brier": 0.1} for h in ("12", "24", "48", "6")}
    sidecar = {
        "task": "icu-mortality",
        "version": "v",
        "threshold": 0.3,
        "sha256": "0" * 64,
        "feature_names": ["a"],
        "metrics": {"validation": "cv", "by_landmark": rows},
    }
    lines = render_markdown(sidecar).splitlines()
    hours = [
        c for line in lines if line.startswith("| ") and (c := line.split("|")[1].strip()) in rows
    ]
    assert hours == ["6", "12", "24", "48"]


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_assembled_calibrated_model_is_calibrator_of_scores_and_compiles(
    dataset: Dataset, method: str
) -> None:
    """The served object is exactly calibrator(decision_function(pipeline)), stays inside
    (0, 1), and the serving hot path compiles it to the same numbers."""
    from vitalcast.modeling.calibration import assemble_calibrated, fit_calibrator
    from vitalcast.serving.scorer import compile_model

    cols = [c for c in dataset.numeric if dataset.X[c].notna().any()]
    spec = CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7})
    pipe = make_pipeline(spec, cols, [], 0).fit(dataset.X[cols], dataset.y)
    scores = pipe.decision_function(dataset.X[cols])
    calibrator = fit_calibrator(method, scores, dataset.y)
    est = assemble_calibrated(pipe, calibrator, method)
    p = est.predict_proba(dataset.X[cols])[:, 1]
    np.testing.assert_array_equal(p, calibrator.predict(scores))
    assert ((p > 0) & (p < 1)).all()
    scorer = compile_model(est, cols)
    assert scorer.compiled, scorer.fallback_reason
    np.testing.assert_allclose(scorer.score_batch(dataset.X[cols].to_numpy()), p, atol=1e-9)


def test_centred_isotonic_keeps_ranks_that_isotonic_ties() -> None:
    """Centred isotonic regression: the PAV block values placed at their blocks' mean
    scores and joined linearly, so the map is monotone, bounded away from 0 and 1, and
    strictly increasing between the outermost block centres (plain isotonic ties them)."""
    from vitalcast.modeling.calibration import ISOTONIC_EPS, centred_isotonic, fit_calibrator

    rng = np.random.default_rng(5)
    s = rng.normal(size=3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(2 * s - 2)))).astype(int)
    cir = centred_isotonic(s, y)
    iso = fit_calibrator("isotonic", s, y)
    grid = np.linspace(s.min(), s.max(), 2001)
    p_cir, p_iso = cir.predict(grid), iso.predict(grid)
    assert (np.diff(p_cir) >= 0).all()
    assert p_cir.min() >= ISOTONIC_EPS
    assert p_cir.max() <= 1 - ISOTONIC_EPS
    inner = (grid > cir.X_thresholds_[1]) & (grid < cir.X_thresholds_[-2])
    assert (np.diff(p_cir[inner]) > 0).all()
    assert len(np.unique(p_cir[inner])) > 5 * len(np.unique(p_iso[inner]))
    # Calibration in the large is kept: mean predicted risk matches the event rate.
    assert abs(cir.predict(s).mean() - y.mean()) < 0.01


@pytest.mark.parametrize(
    ("spec", "method", "ensemble"),
    [
        (CandidateSpec("lr", "lr", {"C": 0.1}), "sigmoid", False),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "isotonic", False),
        (CandidateSpec("rf", "rf", {"n_estimators": 20, "min_samples_leaf": 5}), "sigmoid", False),
        (CandidateSpec("hgb", "hgb", {"max_iter": 30, "max_leaf_nodes": 7}), "sigmoid", True),
    ],
)
def test_served_factors_equal_the_scikit_learn_path(
    dataset: Dataset, spec: CandidateSpec, method: str, ensemble: bool
) -> None:
    """Serving explains from the compiled array form; it must say what pandas+sklearn says."""
    cols, est = _calibrated(dataset, spec, method, ensemble)
    rows = [{}, *dataset.X[cols].iloc[:30].to_dict("records")]
    assert_served_factors_match_sklearn(est, cols, rows)


def test_subgroup_bands_are_listed_in_reading_order() -> None:
    from vitalcast.modeling.report import in_order

    ages = {"80+": {}, "<50": {}, "65-79": {}, "50-64": {}, "unknown": {}}
    assert [g for g, _ in in_order(ages)] == ["<50", "50-64", "65-79", "80+", "unknown"]
    bands = {"[70-80)": {}, "[100-110)": {}, "[0-10)": {}}
    assert [g for g, _ in in_order(bands)] == ["[0-10)", "[70-80)", "[100-110)"]
    assert [g for g, _ in in_order({"male": {}, "female": {}})] == ["female", "male"]
