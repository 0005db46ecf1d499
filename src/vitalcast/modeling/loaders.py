"""Where each task's rows come from: files read through the ingestion adapters, or the store."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from vitalcast.modeling.datasets import (
    Dataset,
    load_physionet,
    load_stays_from_db,
    timeseries_dataset,
)
from vitalcast.modeling.tasks import Part, Task, TaskError, in_holdout, is_task_file_task


def load_dataset(
    task: Task,
    *,
    session: Session | None,
    data: Path | None = None,
    outcomes: Path | None = None,
    task_file: Path | None = None,
    landmarks_h: tuple[float, ...] | None = None,
    part: Part = "all",
    store_after_encounter_id: int | None = None,
) -> Dataset:
    """The labelled rows of ``task`` from ``data`` (and ``outcomes``) or the store.

    ``part`` selects a side of the task's patient-level hold-out split (tasks with a
    ``holdout_fraction``): training reads ``train``, evaluation ``holdout``. The store
    has no such split; ``store_after_encounter_id`` reads from it only the stays stored
    after that encounter, of patients without a labelled stay up to it (see
    :func:`~vitalcast.modeling.datasets.load_stays_from_db`): what a model trained on the
    store through that encounter never saw.

    Raises:
        TaskError: missing or unreadable inputs, with what to pass instead.
    """
    if task.name == "icu-mortality":
        if data is not None:
            if outcomes is None:
                raise TaskError("icu-mortality from files needs --outcomes (Outcomes-a.txt)")
            stays, labels, groups, notes = load_physionet(data, outcomes)
            ds = timeseries_dataset(
                task,
                stays,
                labels,
                groups,
                landmarks_h=landmarks_h,
                source=f"{data.name} + {outcomes.name}",
            )
            ds.notes = notes
            return ds
        if session is None:
            raise TaskError("icu-mortality: give --data or a database")
        stays, labels, groups, ends = load_stays_from_db(
            session, task.outcome_kind, after_encounter_id=store_after_encounter_id
        )
        if not stays and store_after_encounter_id is not None:
            raise TaskError(
                f"{task.name}: the store holds no labelled stay the model has not seen (none"
                " stored since its training data was read, of a patient it never saw);"
                " evaluate it on files with --data"
            )
        ds = timeseries_dataset(
            task,
            stays,
            labels,
            groups,
            landmarks_h=landmarks_h,
            ends_at=ends,
            source="clinical store",
        )
        ds.store_through_encounter_id = max(int(k) for k in stays)
        if store_after_encounter_id is not None:
            ds.source = "clinical store, stays stored after the model's training data"
            ds.notes = [
                f"{len(stays)} labelled stays stored after the model's training data was"
                " read, of patients without a labelled stay before"
            ]
        return ds
    if task.name == "readmission-30d":
        from vitalcast.modeling.tabular import load_readmission

        if data is None:
            raise TaskError("readmission-30d needs --data diabetic_data.csv.gz")
        return _split(task, load_readmission(data), part)
    if is_task_file_task(task):
        from vitalcast.modeling.tabular import load_tabular, task_of_file

        if task_file is None or data is None:
            raise TaskError(f"{task.name} needs --task-file FILE.yaml and --data FILE.csv")
        described = task_of_file(task_file).name
        if described != task.name:
            # A named file's rows under another task's champion (or the reverse) would
            # train, evaluate or recalibrate one table's model on another's outcome.
            raise TaskError(f"{task_file.name} describes the task {described}, not {task.name}")
        return load_tabular(task_file, data)
    raise TaskError(f"task {task.name!r} has no data loader")


def _split(task: Task, ds: Dataset, part: Part) -> Dataset:
    if part == "all" or task.holdout_fraction is None:
        return ds
    held = in_holdout(ds.groups.tolist(), task)
    mask = held if part == "holdout" else ~held
    note = (
        f"{part} side of the patient-level split ({task.holdout_fraction:.0%} of patients"
        f" held out by hashed id): {int(mask.sum())} rows,"
        f" {len(set(ds.groups[mask].tolist()))} patients"
    )
    out = ds.subset(mask, note)
    if len(out.y) == 0:
        raise TaskError(f"{task.name}: no rows on the {part} side of the patient split")
    return out
