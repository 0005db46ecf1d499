"""Recalibration: a registered model's calibration refitted on local outcomes.

A model moved to another hospital (or kept after its case mix changed) often still ranks
patients well but no longer means what it says: its risks run high or low. The textbook
first remedy (Steyerberg, *Clinical Prediction Models*, 2nd ed., ch. 20: "updating") keeps
the fitted model and re-estimates only how its scores map to risks, on local patients
with known outcomes. It needs far fewer events than retraining, and it cannot change the
ranking, so discrimination and the explanations (contributions to the model's raw
log-odds score) stay what was validated.

:func:`recalibrate_version` does that under the change-control plan
(``docs/maintenance-plan.md``): the base model's fitted pipeline is kept as it is; the
calibration map is chosen and fitted on the local rows, and the threshold is re-chosen by
the task's rule, exactly as training does it on out-of-fold scores
(:func:`~vitalcast.modeling.train.calibrate`). Here the raw scores need no cross-fitting
to be honest, since the base model never saw these rows (data it was trained on is
refused, as by ``evaluate``); the map choice and the reported metrics are cross-fitted
over patient-grouped folds. The result is registered as a new version and given the
``challenger`` alias, never ``champion``: a person promotes it after review.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sqlalchemy.orm import Session

from vitalcast.modeling.datasets import Dataset, row_digests
from vitalcast.modeling.external_validation import (
    check_both_classes,
    check_features,
    refuse_training_data,
    resolve_model,
    store_cutoff,
    training_overlap,
)
from vitalcast.modeling.landmark_calibration import LandmarkCalibratedClassifier, raw_scores
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import LoadedModel, read_training_rows, save_model
from vitalcast.modeling.service import (
    TrainOutcome,
    data_summary,
    promote,
    reference_distributions,
    register_version,
    validation_metrics,
)
from vitalcast.modeling.tasks import Task, TaskError
from vitalcast.modeling.train import (
    DEFAULT_SEED,
    calibrate,
    check_trainable,
    fold_count,
    grouped_folds,
    landmark_of_rows,
)
from vitalcast.security import audit

logger = logging.getLogger(__name__)

ACTION = "recalibrate"


def fitted_pipeline(loaded: LoadedModel) -> Any:
    """The fitted model behind a registered model's calibration: what recalibration keeps."""
    est = loaded.pipeline
    if isinstance(est, LandmarkCalibratedClassifier):
        return est.estimator
    if isinstance(est, CalibratedClassifierCV) and len(est.calibrated_classifiers_) == 1:
        return est.calibrated_classifiers_[0].estimator
    raise TaskError(
        f"model {loaded.version} is not calibrated by one map over one fitted model;"
        " it cannot be recalibrated (retrain it instead)"
    )


def recalibrate_version(
    *,
    session: Session | None,
    model: str,
    task: str | None,
    registry_dir: Path,
    data: Path | None = None,
    outcomes: Path | None = None,
    task_file: Path | None = None,
    seed: int = DEFAULT_SEED,
    n_splits: int = 5,
    n_boot: int = 200,
    agent: audit.Agent = audit.SYSTEM,
) -> TrainOutcome:
    """Register ``model`` recalibrated on labelled data it never saw, as ``challenger``.

    The data is read as ``evaluate`` reads it (from files, the held-out side of a task's
    patient split; from the store, the stays stored after the model's training data) and
    refused on the same grounds: the model's training data, data more than 1 % of whose
    patients hold a training row, data without its features, or too few events of either
    outcome to fit a map. The new version's training rows are the base model's and these,
    so that neither can later be passed off as validation data.

    Raises:
        TaskError: the data cannot recalibrate this model (the message says why).
        RegistryError: the model cannot be found or loaded.
    """
    started = time.perf_counter()
    loaded, spec = resolve_model(
        session, model, task, registry_dir, outcomes=outcomes, task_file=task_file
    )
    base = fitted_pipeline(loaded)
    store_after = store_cutoff(loaded) if data is None and spec.kind == "timeseries" else None
    ds = load_dataset(
        spec,
        session=session,
        data=data,
        outcomes=outcomes,
        task_file=task_file,
        part="holdout",
        store_after_encounter_id=store_after,
    )
    refuse_training_data(loaded, spec, ds, ACTION)
    training_overlap(loaded, ds, ACTION)
    check_features(loaded, ds, ACTION)
    check_both_classes(spec, ds, ACTION)
    check_trainable(ds, spec)
    features = loaded.feature_names
    X, y = ds.X[features], ds.y
    numeric = [f for f in features if f not in set(loaded.categorical)]
    n_splits = fold_count(y, ds.groups, n_splits)
    folds = grouped_folds(y, ds.groups, n_splits, seed)
    calibrated = calibrate(
        base,
        raw_scores(base, X),
        y,
        folds,
        ds.rows_at(spec.primary_landmark_h),
        landmark_of_rows(ds, numeric),
        spec,
    )
    choice = calibrated.choice
    metrics = validation_metrics(spec, ds, choice.oof_proba, calibrated.threshold, n_boot=n_boot)
    metrics["validation"] = (
        f"{n_splits}-fold cross-fitting grouped by patient on the recalibration data"
        f" ({ds.source}): the fitted model never saw these rows; each fold's calibration"
        " map was fitted without it"
    )
    version, path, sha, _sidecar = save_model(
        registry_dir,
        calibrated.estimator,
        publish=session is None,  # registered: moved into place by register_version
        task=spec.name,
        feature_names=features,
        categorical=list(loaded.categorical),
        threshold=calibrated.threshold,
        metrics=metrics,
        # The base model's: `evaluate` refuses its training data by this fingerprint, and
        # the recalibration rows by the training rows below.
        fingerprint=str(loaded.sidecar.get("training_data_fingerprint", "")),
        training_rows=_training_rows(loaded, ds, features),
        reference=_reference(ds, spec, features, list(loaded.categorical), choice.oof_proba),
        extra=_lineage(loaded, ds, spec, choice.label, n_splits, seed),
    )
    alias = None
    if session is not None:
        register_version(
            session,
            version=version,
            task=spec.name,
            path=path,
            sha256=sha,
            threshold=calibrated.threshold,
            metrics=metrics,
            agent=agent,
            champion_if_none=False,
        )
        alias = promote(
            session,
            version=version,
            alias="challenger",
            agent=agent,
            details={"recalibrated_from": loaded.version},
        ).alias
    logger.info("registered %s, %s recalibrated (%s)", version, loaded.version, choice.label)
    seconds = time.perf_counter() - started
    return TrainOutcome(
        version, spec.name, metrics, calibrated.threshold, path, sha, alias, seconds
    )


def _training_rows(loaded: LoadedModel, ds: Dataset, features: list[str]) -> np.ndarray:
    """The base model's training rows and the recalibration rows: what the new version
    has learnt from, either way."""
    base = read_training_rows(loaded.path.parent, loaded.sidecar)
    local = row_digests(ds.X[features])
    both = local if base is None else np.concatenate([base, local])
    return np.unique(both)


def _reference(
    ds: Dataset, spec: Task, features: list[str], categorical: list[str], proba: np.ndarray
) -> dict[str, Any]:
    """Monitoring's reference: the population the maps were fitted to (the recalibration
    rows at the training landmarks), with the recalibrated scores."""
    rows = ds.training_rows(spec)
    return reference_distributions(
        ds.X.loc[rows, features], categorical, proba[rows], meta=ds.meta.loc[rows]
    )


def _lineage(
    loaded: LoadedModel, ds: Dataset, spec: Task, label: str, n_splits: int, seed: int
) -> dict[str, Any]:
    """What the sidecar says of where the version came from: the base model's fit, and
    the local data its calibration now comes from."""
    base = loaded.sidecar
    model = dict(base.get("model") or {})
    model |= {
        "calibration": label,
        "recalibrated_from": loaded.version,
        "recalibration": {"n_splits": n_splits, "seed": seed, "data": ds.source},
    }
    return {
        "model": model,
        "value_names": base.get("value_names", {}),
        "feature_words": base.get("feature_words", {}),
        "data": data_summary(ds, spec) | {"base_model_data": base.get("data", {})},
    }
