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
from vitalcast.modeling.tasks import Task, TaskError


def load_dataset(
    task: Task,
    *,
    session: Session | None,
    data: Path | None = None,
    outcomes: Path | None = None,
    task_file: Path | None = None,
    landmarks_h: tuple[float, ...] | None = None,
) -> Dataset:
    """The labelled rows of ``task`` from ``data`` (and ``outcomes``) or the store.

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
        stays, labels, groups, ends = load_stays_from_db(session, task.outcome_kind)
        return timeseries_dataset(
            task,
            stays,
            labels,
            groups,
            landmarks_h=landmarks_h,
            ends_at=ends,
            source="clinical store",
        )
    if task.name == "readmission-30d":
        from vitalcast.modeling.tabular import load_readmission

        if data is None:
            raise TaskError("readmission-30d needs --data diabetic_data.csv.gz")
        return load_readmission(data)
    if task.name == "tabular":
        from vitalcast.modeling.tabular import load_tabular

        if task_file is None or data is None:
            raise TaskError("tabular needs --task-file FILE.yaml and --data FILE.csv")
        return load_tabular(task_file, data)
    raise TaskError(f"task {task.name!r} has no data loader")
