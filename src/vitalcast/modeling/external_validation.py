"""External validation: a registered model's metrics on labelled data it never saw.

Each evaluation is kept beside its version (``evaluations/<data fingerprint>.json``), so
the model report and ``docs/model-report.md`` are rendered from the registry, never
retyped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.modeling.loaders import load_dataset
from vitalcast.modeling.registry import RegistryError, jsonable, load_model, read_sidecar
from vitalcast.modeling.service import (
    ALIASES,
    get_version,
    get_version_or_raise,
    load_registered,
    validation_metrics,
)
from vitalcast.modeling.tables import ModelVersion
from vitalcast.modeling.tasks import get_task


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
    """Metrics of a registered model on labelled data (external validation).

    The model is found in the database (its row's sha256 is the reference); a version
    directory present only in ``registry_dir`` is verified against its sidecar.
    """
    row = None
    if session is not None:
        if model in ALIASES:
            task = task or _infer_task(session, model, outcomes=outcomes, task_file=task_file)
            row = get_version_or_raise(session, model, task)
        else:
            row = get_version(session, model)
    if row is not None:
        loaded = load_registered(session, row)  # type: ignore[arg-type]
    else:
        sidecar = read_sidecar(model, registry_dir)
        loaded = load_model(model, str(sidecar.get("sha256")), registry_dir=registry_dir)
    spec = get_task(loaded.task)
    if task is not None and task != spec.name:
        raise RegistryError(f"model {loaded.version} is for {spec.name}, not {task}")
    if landmark_h is not None and spec.kind == "timeseries":
        spec = replace(
            spec,
            landmarks_h=(landmark_h,),
            primary_landmark_h=landmark_h,
            calibration_landmarks_h=(),
        )
    ds = load_dataset(
        spec,
        session=session,
        data=data,
        outcomes=outcomes,
        task_file=task_file,
        part="holdout",
    )
    proba = loaded.predict_proba(ds.X)
    metrics = validation_metrics(spec, ds, proba, loaded.threshold, n_boot=n_boot)
    metrics["model"] = loaded.version
    metrics["data"] = ds.source
    metrics["data_fingerprint"] = ds.fingerprint
    metrics["notes"] = ds.notes
    if spec.kind == "timeseries":
        metrics["validation"] = (
            f"external: one prediction per stay at {spec.primary_landmark_h:g} h ({ds.source})"
        )
    elif spec.holdout_fraction is not None:
        metrics["validation"] = f"held-out patients of the patient-level split ({ds.source})"
    save_evaluation(loaded.path.parent, metrics)
    return metrics


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
    """Stored evaluations of a version, oldest first."""
    folder = version_dir / "evaluations"
    if not folder.is_dir():
        return []
    records = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: str(r.get("evaluated_at", "")))


def _infer_task(
    session: Session, alias: str, *, outcomes: Path | None, task_file: Path | None
) -> str:
    """Which task's ``alias`` ``--model`` means when ``--task`` is not given: the only task
    that has one, else the task the inputs imply (``--task-file``: tabular; ``--outcomes``:
    icu-mortality)."""
    holders = sorted(
        {r.task for r in session.scalars(select(ModelVersion).where(ModelVersion.alias == alias))}
    )
    if len(holders) == 1:
        return holders[0]
    if task_file is not None:
        return "tabular"
    if outcomes is not None:
        return "icu-mortality"
    if not holders:
        raise RegistryError(f"no task has a {alias}; see `vitalcast models list`")
    raise RegistryError(
        f"--model {alias} is ambiguous ({', '.join(holders)} each have one); add --task"
    )
