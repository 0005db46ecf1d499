"""Prediction tasks: each names its cohort, label, features and operating-point rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitalcast.errors import VitalcastError

ThresholdRule = Literal["max_min_se_ppv", "youden"]


class TaskError(VitalcastError):
    """An unknown task, or task data that cannot train or evaluate a model."""


@dataclass(frozen=True, slots=True)
class Task:
    """What a model predicts, for whom, and how its operating threshold is chosen."""

    name: str
    kind: Literal["timeseries", "tabular"]
    outcome_kind: str  # Outcome.kind in the store
    description: str
    threshold_rule: ThresholdRule
    landmarks_h: tuple[float, ...] = ()
    # Landmark whose out-of-fold predictions pick the threshold and headline metrics.
    primary_landmark_h: float | None = None


TASKS: dict[str, Task] = {
    "icu-mortality": Task(
        name="icu-mortality",
        kind="timeseries",
        outcome_kind="in_hospital_death",
        description=(
            "In-hospital death of an adult ICU patient, predicted at any time of the stay"
            " from the observations so far (landmarks 6, 12, 24 and 48 h after ICU admission)."
        ),
        # The 2012 challenge's Event 1: maximise min(sensitivity, positive predictivity).
        threshold_rule="max_min_se_ppv",
        landmarks_h=(6.0, 12.0, 24.0, 48.0),
        primary_landmark_h=48.0,
    ),
    "readmission-30d": Task(
        name="readmission-30d",
        kind="tabular",
        outcome_kind="readmission_30d",
        description=(
            "Readmission within 30 days of discharge, from the encounter's record at"
            " discharge (Diabetes 130 cohort; encounters ending in death or hospice excluded)."
        ),
        threshold_rule="youden",
    ),
    "tabular": Task(
        name="tabular",
        kind="tabular",
        outcome_kind="label",
        description="Any table with a binary label column, described by a YAML task file.",
        threshold_rule="youden",
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        TaskError: unknown task (the message lists the known ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
