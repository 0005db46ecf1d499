"""Prediction tasks: each names its cohort, label, features and operating-point rule."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import numpy as np

from vitalcast.errors import VitalcastError

ThresholdRule = Literal["max_min_se_ppv", "youden"]
Part = Literal["train", "holdout", "all"]


class TaskError(VitalcastError):
    """An unknown task, or task data that cannot train or evaluate a model."""


# Encounter kinds of the store (``Encounter.kind``), in words a clinician reads.
ENCOUNTER_KIND_WORDS = {
    "icu": "an ICU stay",
    "inpatient": "a hospital stay",
    "emergency": "an emergency department visit",
    "outpatient": "an outpatient visit",
}


@dataclass(frozen=True, slots=True)
class Population:
    """Whom a task's model may score: the kind of encounter and the ages its training
    data stood for.

    Why: a model says nothing valid about patients unlike those it learnt from. An ICU
    mortality risk for a child's clinic visit would look as authoritative as one for an
    adult ICU stay, so encounters outside are not scored at all, and every view says why.
    An unknown age does not exclude (the model imputes it, and the view lists it among the
    missing inputs); an unknown kind cannot happen (the store requires one).
    """

    encounter_kinds: frozenset[str]
    min_age_years: float | None = None
    # The population in words ("ICU and hospital stays of patients aged 15 or over"),
    # and why its bounds are what they are: shown beside every exclusion and in reports.
    label: str = ""
    basis: str = ""
    # The hospital's units whose stays are scored (empty: every unit); see on_units.
    units: frozenset[str] = frozenset()
    # The feature a flat feature vector carries the age in: a vector has no encounter to
    # read the age from, so its own value is held to min_age_years (age_exclusion).
    age_feature: str | None = None

    def on_units(self, units: Collection[str]) -> Population:
        """This population on ``units`` only (none: unchanged).

        Why: FHIR and HL7 v2 carry no ICU encounter class, so a feed of the whole
        hospital's admissions makes every general-ward stay a "hospital stay" in the
        population of a model that learnt from ICU stays. A deployment names its ICU
        units (``VITALCAST_STAY_UNITS``) and the other wards' patients get no ICU risk.
        """
        if not units:
            return self
        named = frozenset(units)
        return replace(self, units=named, label=f"{self.label} on units {', '.join(sorted(named))}")

    def age_exclusion(self, age_years: float | None) -> str | None:
        """ "a patient aged 7" when ``age_years`` is below the population's; else None
        (an unknown age does not exclude: the model imputes it)."""
        low = self.min_age_years
        if low is not None and age_years is not None and age_years < low:
            return f"a patient aged {math.floor(age_years)}"
        return None

    def exclusion(self, kind: str, age_years: float | None, unit: str | None = None) -> str | None:
        """Why an encounter of ``kind`` and ``age_years`` on ``unit`` is outside, as a
        sentence fragment ("an outpatient visit", "a patient aged 7", "a stay on unit 4
        West"); None when it is inside."""
        if kind not in self.encounter_kinds:
            return ENCOUNTER_KIND_WORDS.get(kind, f"an encounter of kind {kind!r}")
        too_young = self.age_exclusion(age_years)
        if too_young is not None:
            return too_young
        if self.units and unit not in self.units:
            return "a stay without a unit" if unit is None else f"a stay on unit {unit}"
        return None


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
    # Earlier landmarks whose rows only calibrate: scored out of fold and given their own
    # calibration map, never trained on (the model cannot learn from them without
    # losing accuracy later in the stay; see ``TASKS["icu-mortality"]``).
    calibration_landmarks_h: tuple[float, ...] = ()
    # Patient-level hold-out inside one file (tasks whose data has no separate test set):
    # patients whose salted hash falls in this fraction never train and are what
    # `evaluate` scores. None: train on everything given, evaluate on everything given.
    holdout_fraction: float | None = None
    # What the training data cannot tell about the served risk, printed in model cards
    # and reports beside the figures.
    limitations: tuple[str, ...] = ()
    # Whom the served model may score (None: whoever the caller sends, as for feature
    # vectors of a ``tabular`` task).
    population: Population | None = None

    @property
    def all_landmarks_h(self) -> tuple[float, ...]:
        """Every landmark a data set of this task has rows at, in time order."""
        return tuple(sorted(self.calibration_landmarks_h + self.landmarks_h))


# The task whose champion scores stays in progress: the ward, the chart's current risk
# and its history, the live events. Other tasks' predictions of a stored patient (a
# discharge's readmission risk) are stored beside them and never mixed into them.
STAY_TASK = "icu-mortality"

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
        # A 3 h map, so that risks in the first hours are calibrated too. Training on the
        # 3 h rows as well lowered the 48 h out-of-fold AUROC on PhysioNet set A from
        # 0.860 to 0.851 (log loss 0.288 -> 0.295), so they only calibrate.
        calibration_landmarks_h=(3.0,),
        limitations=(
            "PhysioNet 2012 holds only ICU stays of at least 48 h, so every training and"
            " validation row at 3, 6, 12 and 24 h is a patient who went on to stay 48 h."
            " Risks in the first two days are calibrated for such patients, not for those"
            " who die or leave the ICU earlier; check early-hour calibration on local data"
            " (silent mode, docs/maintenance-plan.md) before relying on them.",
        ),
        population=Population(
            encounter_kinds=frozenset({"icu", "inpatient"}),
            min_age_years=15.0,
            age_feature="age_years",
            label="ICU and hospital stays of patients aged 15 or over",
            basis=(
                "PhysioNet 2012 holds adult ICU stays (ages 15 to 90 in set A). FHIR and"
                " HL7 v2 have no ICU encounter class, so hospital stays are scored too;"
                " emergency and outpatient visits and children are not."
            ),
        ),
    ),
    "readmission-30d": Task(
        name="readmission-30d",
        kind="tabular",
        outcome_kind="readmission_30d",
        description=(
            "Readmission within 30 days of discharge, from the encounter's record at"
            " discharge (Diabetes 130 cohort; encounters ending in death or hospice excluded)."
        ),
        limitations=(
            "Diabetes 130 (130 US hospitals, 1999-2008) records only readmissions to the"
            " same hospitals and only encounters of diabetic patients; its admission,"
            " discharge and source codes are that data set's own.",
        ),
        threshold_rule="youden",
        holdout_fraction=0.2,
        population=Population(
            encounter_kinds=frozenset({"inpatient"}),
            label="hospital stays",
            basis=(
                "Diabetes 130 holds inpatient encounters of 1 to 14 days. An ICU stay inside"
                " a hospital stay is part of that stay, not a discharge of its own."
            ),
        ),
    ),
    "tabular": Task(
        name="tabular",
        kind="tabular",
        outcome_kind="label",
        description="Any table with a binary label column, described by a YAML task file.",
        threshold_rule="youden",
    ),
}

# A task file's ``name: sepsis`` makes its models the task ``tabular:sepsis``: champions,
# challengers, promotion and rollback are per named task, so a data team's second table
# never replaces the first one's champion (a task file without a name is ``tabular``).
TABULAR = "tabular"
TABULAR_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")


def named_tabular(name: str) -> Task:
    """The ``tabular`` task of the task file named ``name`` (``tabular:<name>``).

    Raises:
        TaskError: ``name`` is not lower-case letters, digits and hyphens (at most 48),
            the form a task name takes in URLs, JSON bodies and the registry.
    """
    if not TABULAR_NAME.fullmatch(name):
        raise TaskError(
            f"a task file's name must be 1 to 48 lower-case letters, digits and hyphens,"
            f" starting with a letter or digit (got {name!r})"
        )
    return replace(TASKS[TABULAR], name=f"{TABULAR}:{name}")


def is_task_file_task(task: Task | str) -> bool:
    """Whether ``task`` is described by a YAML task file (``tabular`` or ``tabular:<name>``)."""
    name = task if isinstance(task, str) else task.name
    return name == TABULAR or name.startswith(f"{TABULAR}:")


# Whom the stay task's model scores before a deployment narrows it to its units
# (serving/scoring.served_population): the default of the functions that pick stays.
STAY_POPULATION = TASKS[STAY_TASK].population


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        TaskError: unknown task (the message lists the known ones).
    """
    if name in TASKS:
        return TASKS[name]
    prefix, _, file_name = name.partition(":")
    if prefix == TABULAR and file_name:
        return named_tabular(file_name)
    raise TaskError(
        f"unknown task {name!r}; choose one of {', '.join(TASKS)} or {TABULAR}:NAME"
        " (a task file's name)"
    )


def in_holdout(patient_ids: Sequence[object], task: Task) -> np.ndarray:
    """Boolean mask: which rows belong to held-out patients of ``task``'s split.

    The split is a pure function of the patient identifier (sha256 of
    ``"<task>:<id>"``), so it is stable across runs, machines and row order, and a patient
    is always wholly on one side.
    """
    if task.holdout_fraction is None:
        return np.zeros(len(patient_ids), dtype=bool)
    cut = task.holdout_fraction * 2**64
    out = np.empty(len(patient_ids), dtype=bool)
    for i, pid in enumerate(patient_ids):
        digest = hashlib.sha256(f"{task.name}:{pid}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") < cut
    return out


def early_in_stay(
    task_name: str | None, admitted_at: datetime, scored_at: datetime | None
) -> dict[str, float] | None:
    """``{"hours": h, "first_landmark_h": L}`` when a risk was scored ``h`` hours into the
    stay, before its task's first landmark ``L``; else None.

    Why: a model is calibrated from its first landmark on (3 h for icu-mortality).
    Earlier risks rest on very few observations and are extrapolated from that map, so the
    ward list, the patient page and the CDS Hooks card say so rather than showing them
    with the same authority.
    """
    if scored_at is None:
        return None
    # Ingestion accepts an admission up to a few minutes ahead of the clock (drift), so a
    # stay scored at its start can be scored "before" it: that is its hour 0, not a
    # time past the first landmark (it was shown without the caution).
    hours = max((scored_at - admitted_at).total_seconds() / 3600.0, 0.0)
    return early_at(task_name, hours)


def early_at(task_name: str | None, hours: float | None) -> dict[str, float] | None:
    """:func:`early_in_stay` for a risk scored ``hours`` after admission (None or NaN:
    unknown, never early)."""
    task = TASKS.get(task_name or "")
    if task is None or not task.all_landmarks_h or hours is None or math.isnan(hours):
        return None
    first = task.all_landmarks_h[0]
    return {"hours": hours, "first_landmark_h": first} if 0 <= hours < first else None
