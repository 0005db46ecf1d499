"""External validation: a registered model's metrics on labelled data it never saw.

Each evaluation is kept beside its version (``evaluations/<data fingerprint>.json``), so
the model report and ``docs/model-report.md`` are rendered from the registry, never
retyped.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.modeling.datasets import Dataset, fingerprint_of, row_digests
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import (
    LoadedModel,
    RegistryError,
    jsonable,
    load_model,
    read_sidecar,
    read_training_rows,
)
from vitalcast.modeling.service import (
    ALIASES,
    get_version,
    get_version_or_raise,
    load_registered,
    validation_metrics,
)
from vitalcast.modeling.tables import ModelVersion
from vitalcast.modeling.tasks import Task, TaskError, get_task


def evaluate_version(
    *,
    session: Session | None,
    model: str,
    task: str | None,
    registry_dir: Path,
    data: Path | None = None,
    outcomes: Path | None = None,
    task_file: Path | None = None,
    landmark_h: float | None = None,
    n_boot: int = 200,
) -> dict[str, Any]:
    """Metrics of a registered model on labelled data it never saw (external validation).

    The model is found in the database (its row's sha256 is the reference); a version
    directory present only in ``registry_dir`` is verified against its sidecar.

    Refused, before anything is saved: the data the model was trained on (its
    fingerprint equals the sidecar's ``training_data_fingerprint``: resubstitution, not
    validation); from the store, anything but the stays stored after the model's training
    data was read (:func:`store_cutoff`); data without the model's features, or whose
    label has one class; a landmark that is not a positive number of hours.

    Raises:
        TaskError: the data cannot validate this model (the message says why).
        RegistryError: the model cannot be found or loaded.
    """
    loaded, trained = resolve_model(
        session, model, task, registry_dir, outcomes=outcomes, task_file=task_file
    )
    spec = trained
    if landmark_h is not None:
        landmark_h = _checked_landmark(trained, landmark_h)
        spec = replace(
            trained,
            landmarks_h=(landmark_h,),
            primary_landmark_h=landmark_h,
            calibration_landmarks_h=(),
        )
    store_after = store_cutoff(loaded) if data is None and trained.kind == "timeseries" else None
    ds = load_dataset(
        trained,
        session=session,
        data=data,
        outcomes=outcomes,
        task_file=task_file,
        # With --landmark, the training landmarks too: the rows at them are what the
        # training fingerprint was taken of (the resubstitution check below).
        landmarks_h=(
            None if landmark_h is None else tuple(sorted({*trained.all_landmarks_h, landmark_h}))
        ),
        part="holdout",
        store_after_encounter_id=store_after,
    )
    refuse_training_data(loaded, trained, ds)
    seen_patients = training_overlap(loaded, ds)
    if landmark_h is not None:
        notes = ds.notes
        ds = ds.subset(ds.rows_at(landmark_h), "")
        ds.notes = notes
    check_features(loaded, ds)
    check_both_classes(spec, ds)
    proba = loaded.predict_proba(ds.X)
    metrics = validation_metrics(spec, ds, proba, loaded.threshold, n_boot=n_boot)
    metrics["model"] = loaded.version
    metrics["data"] = ds.source
    metrics["data_fingerprint"] = ds.fingerprint
    metrics["notes"] = ds.notes
    if seen_patients is not None:
        metrics["training_overlap_patients"] = seen_patients
    if spec.kind == "timeseries":
        kind = "temporal" if store_after is not None else "external"
        metrics["validation"] = (
            f"{kind}: one prediction per stay at {spec.primary_landmark_h:g} h ({ds.source})"
        )
    elif spec.holdout_fraction is not None:
        metrics["validation"] = f"held-out patients of the patient-level split ({ds.source})"
    save_evaluation(loaded.path.parent, metrics)
    return metrics


def resolve_model(
    session: Session | None,
    model: str,
    task: str | None,
    registry_dir: Path,
    *,
    outcomes: Path | None = None,
    task_file: Path | None = None,
) -> tuple[LoadedModel, Task]:
    """The verified model ``model`` names (a version, or an alias of ``task``, or of the
    task the inputs imply), and its task.

    Found in the database (its row's sha256 is the reference); a version directory present
    only in ``registry_dir`` is verified against its sidecar.

    Raises:
        RegistryError: the model cannot be found or loaded, or is for another task.
    """
    row = None
    if session is not None:
        if model in ALIASES:
            task = task or _infer_task(session, model, outcomes=outcomes, task_file=task_file)
            row = get_version_or_raise(session, model, task)
        else:
            row = get_version(session, model)
    if row is not None:
        assert session is not None
        loaded = load_registered(session, row)
    else:
        sidecar = read_sidecar(model, registry_dir)
        loaded = load_model(model, str(sidecar.get("sha256")), registry_dir=registry_dir)
    trained = get_task(loaded.task)
    if task is not None and task != trained.name:
        raise RegistryError(f"model {loaded.version} is for {trained.name}, not {task}")
    return loaded, trained


def _checked_landmark(task: Task, landmark_h: float) -> float:
    """``landmark_h`` when it can be scored: a finite number of hours after admission
    above 0, for a time-series task (a negative hour scored the stay before admission;
    NaN failed deep in the feature code)."""
    if task.kind != "timeseries":
        raise TaskError(f"--landmark applies to time-series tasks; {task.name} is scored once")
    if not math.isfinite(landmark_h) or landmark_h <= 0:
        raise TaskError(
            f"--landmark must be a finite number of hours after admission above 0"
            f" (got {landmark_h:g})"
        )
    return float(landmark_h)


def store_cutoff(loaded: LoadedModel) -> int | None:
    """From the store, only stays a model never saw: those stored after the last encounter
    its training read (``store_through_encounter_id`` in its sidecar), or every labelled
    stay (None) for a model trained on files.

    Raises:
        TaskError: the model was trained on the store but its sidecar does not say how far
            (trained before this was recorded): the store cannot tell its stays apart.
    """
    data = loaded.sidecar.get("data") or {}
    cutoff = data.get("store_through_encounter_id")
    if cutoff is not None:
        return int(cutoff)
    if str(data.get("source", "")).startswith("clinical store"):
        raise TaskError(
            f"model {loaded.version} was trained on the clinical store, and its record does"
            " not say up to which stay, so the store cannot tell the stays it never saw;"
            " evaluate it on files with --data"
        )
    return None


def refuse_training_data(
    loaded: LoadedModel, trained: Task, ds: Dataset, action: str = "evaluate"
) -> None:
    """Refuse the data the model was trained on: its metrics would be resubstitution
    (AUROC near 1.0 for a flexible model), which a report would show as validation.

    Compared as read, in the model's column order (a task file listing the same features
    in another order), and, for time-series data read with an extra landmark, at the
    training landmarks only.
    """
    seen = loaded.sidecar.get("training_data_fingerprint")
    if not seen:
        return
    prints = {ds.fingerprint}
    if all(f in ds.X.columns for f in loaded.feature_names):
        prints.add(fingerprint_of(ds.X[loaded.feature_names], ds.y))
    if trained.kind == "timeseries" and "landmark_h" in ds.meta:
        at = np.isin(ds.meta["landmark_h"].to_numpy(dtype=float), trained.all_landmarks_h)
        if not at.all():
            prints.add(fingerprint_of(ds.X.loc[at].reset_index(drop=True), ds.y[at]))
    if seen in prints:
        raise TaskError(
            f"{ds.source} is the data model {loaded.version} was trained on (same"
            " fingerprint); its metrics there would be resubstitution, not validation."
            f" {action.capitalize()} it on data it never saw"
        )


# Most patients of validation data that may hold a training row: a few identical rows
# are chance (two patients of a small table with the same values), more is leakage.
MAX_TRAINING_OVERLAP = 0.01


def training_overlap(loaded: LoadedModel, ds: Dataset, action: str = "evaluate") -> int | None:
    """How many patients of ``ds`` have a row identical to one the model was trained on
    (None: the model predates kept training rows, or the data lacks its features).

    The fingerprint check catches the training data itself; this catches data that
    contains it (the training file with new patients appended, two sets concatenated).

    Raises:
        TaskError: more than :data:`MAX_TRAINING_OVERLAP` of the patients (and at least
            one) have training rows; the message says how many, never which.
    """
    seen = read_training_rows(loaded.path.parent, loaded.sidecar)
    if seen is None or not all(f in ds.X.columns for f in loaded.feature_names):
        return None
    hit = np.isin(row_digests(ds.X[loaded.feature_names]), seen)
    patients = pd.unique(pd.Series(ds.groups))
    overlap = int(pd.Series(ds.groups[hit]).nunique())
    if overlap and overlap > MAX_TRAINING_OVERLAP * len(patients):
        raise TaskError(
            f"{overlap} of the {len(patients)} patients in {ds.source} have rows model"
            f" {loaded.version} was trained on; its metrics on them would not be validation."
            f" {action.capitalize()} it on patients it never saw"
        )
    if overlap:
        ds.notes.append(
            f"{overlap} of {len(patients)} patients have a row identical to a training row"
        )
    return overlap


def check_features(loaded: LoadedModel, ds: Dataset, action: str = "evaluate") -> None:
    """The data must define the model's outcome (a task file's label column and positive
    values, when the model's sidecar records them) and hold each of its features, of the
    kind it was trained on.

    Why the outcome: a task file whose label is another column, or ``positive: "<30"``
    where the model learnt ``">30"``, has the same features, and its metrics would
    describe a model of one outcome scored against another.
    """
    trained_outcome = (loaded.sidecar.get("data") or {}).get("outcome")
    if trained_outcome is not None and ds.outcome is not None and ds.outcome != trained_outcome:
        raise TaskError(
            f"{ds.source}: the task file's outcome is column {ds.outcome['column']!r} ="
            f" {', '.join(map(repr, ds.outcome['positive']))}; model {loaded.version} predicts"
            f" column {trained_outcome['column']!r} ="
            f" {', '.join(map(repr, trained_outcome['positive']))}; {action} it with the task"
            " file it was trained with"
        )
    missing = [f for f in loaded.feature_names if f not in ds.X.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise TaskError(
            f"{ds.source} lacks {len(missing)} of the {len(loaded.feature_names)} features"
            f" of model {loaded.version}: {shown}; {action} it with the task file it was"
            " trained with"
        )
    categorical = set(loaded.categorical)
    changed = [f for f in loaded.feature_names if (f in categorical) != (f in ds.categorical)]
    if changed:
        raise TaskError(
            f"{ds.source}: {', '.join(changed[:10])} of another kind (numeric or categorical)"
            f" than in model {loaded.version}; {action} it with the task file it was trained with"
        )


def check_both_classes(task: Task, ds: Dataset, action: str = "evaluate") -> None:
    """Refuse rows whose label has one class (or no rows): AUROC, slope and the rest are
    undefined there, and a stored evaluation of NaNs would reach the report."""
    y = ds.y[ds.rows_at(task.primary_landmark_h)]
    at = "" if task.primary_landmark_h is None else f" at {task.primary_landmark_h:g} h"
    if len(y) == 0:
        raise TaskError(f"{task.name}: {ds.source} has no row to {action}{at}")
    classes = sorted(set(np.unique(y).tolist()))
    if len(classes) < 2:
        raise TaskError(
            f"{task.name}: the label has one class (every row{at} is {classes[0]}) in"
            f" {ds.source}; both outcomes (0 and 1) are needed to {action} a model"
        )


def save_evaluation(version_dir: Path, metrics: dict[str, Any]) -> Path:
    """Keep an evaluation beside the version (``evaluations/<data fingerprint>.json``) so
    reports are rendered from the registry, never retyped. The artifact and its sha256
    are untouched; re-evaluating the same data replaces the record."""
    folder = version_dir / "evaluations"
    folder.mkdir(exist_ok=True)
    target = folder / f"{str(metrics['data_fingerprint'])[:16]}.json"
    payload = {**metrics, "evaluated_at": utcnow().isoformat()}
    target.write_text(json.dumps(jsonable(payload), indent=2, sort_keys=True))
    return target


def evaluations_of(version_dir: Path) -> list[dict[str, Any]]:
    """Stored evaluations of a version, oldest first.

    A record damaged on disk (truncated, not UTF-8, not a JSON object) raises
    :class:`RegistryError` naming the file: a model card silently without its figures on
    unseen data would show only the optimistic internal ones."""
    folder = version_dir / "evaluations"
    if not folder.is_dir():
        return []
    records = []
    for f in sorted(folder.glob("*.json")):
        try:
            record = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(
                f"stored evaluation evaluations/{f.name} of {version_dir.name} cannot be"
                f" read ({type(exc).__name__}); evaluate again to replace it"
            ) from None
        if not isinstance(record, dict):
            raise RegistryError(
                f"stored evaluation evaluations/{f.name} of {version_dir.name} is not a"
                " JSON object; evaluate again to replace it"
            )
        records.append(record)
    return sorted(records, key=lambda r: str(r.get("evaluated_at", "")))


def _infer_task(
    session: Session, alias: str, *, outcomes: Path | None, task_file: Path | None
) -> str:
    """Which task's ``alias`` ``--model`` means when ``--task`` is not given: a task file's
    own (``tabular`` or ``tabular:<name>``), else the only task that has one, else the task
    the inputs imply (``--outcomes``: icu-mortality)."""
    if task_file is not None:
        from vitalcast.modeling.tabular import task_of_file

        return task_of_file(task_file).name
    holders = sorted(
        {r.task for r in session.scalars(select(ModelVersion).where(ModelVersion.alias == alias))}
    )
    if len(holders) == 1:
        return holders[0]
    if outcomes is not None:
        return "icu-mortality"
    if not holders:
        raise RegistryError(f"no task has a {alias}; see `vitalcast models list`")
    raise RegistryError(
        f"--model {alias} is ambiguous ({', '.join(holders)} each have one); add --task"
    )
