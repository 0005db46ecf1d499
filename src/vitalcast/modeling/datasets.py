"""Training and evaluation data for each task: a feature frame, labels, patient groups.

Time-series tasks read PhysioNet files through the ingestion parser
(:mod:`vitalcast.ingest.sources.physionet`) and the ingestion validation rules, in memory,
or the clinical store; both end in :class:`StayInput` and the one feature code path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.features import StayInput, build_feature_frame
from vitalcast.ingest.sources.physionet import (
    PhysionetFormatError,
    iter_records,
    parse_outcomes,
    parse_record,
)
from vitalcast.ingest.validate import Invalid, check_observation, drop_implausible_descriptors
from vitalcast.modeling.tasks import Task, TaskError

logger = logging.getLogger(__name__)

AGE_BANDS = ((0, 50, "<50"), (50, 65, "50-64"), (65, 80, "65-79"), (80, 200, "80+"))


@dataclass
class Dataset:
    """Rows to learn from: features ``X``, labels ``y``, patient ``groups``, row ``meta``."""

    X: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray
    meta: pd.DataFrame  # stay_id, landmark_h, sex, age_band, unit (subgroups, landmarks)
    numeric: list[str]
    categorical: list[str] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # Names of coded category values, per column (code -> name), from the data set's own
    # code table; stored in the sidecar so explanations say "Discharged to: Home".
    value_names: dict[str, dict[str, str]] = field(default_factory=dict)
    # The data's own words for its features, name -> (label, unit): a tabular task file's.
    feature_words: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Rows read from the clinical store: the highest encounter id among them. Encounter ids
    # only grow, so a stay with a higher id was stored after this data was read and no
    # model trained on it can have seen it (what `evaluate` scores from the store).
    store_through_encounter_id: int | None = None
    # What a task file calls the outcome, ``{"column": ..., "positive": [...]}``: kept in
    # the sidecar, so that data whose task file defines another outcome is refused rather
    # than scored against the wrong label (None: the task's code defines it).
    outcome: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the feature matrix and labels: what the model actually saw."""
        return fingerprint_of(self.X, self.y)

    def subset(self, mask: np.ndarray, note: str) -> Dataset:
        """The rows where ``mask`` is true (index reset), with ``note`` appended."""
        idx = np.flatnonzero(mask)
        return Dataset(
            X=self.X.iloc[idx].reset_index(drop=True),
            y=self.y[idx],
            groups=self.groups[idx],
            meta=self.meta.iloc[idx].reset_index(drop=True),
            numeric=list(self.numeric),
            categorical=list(self.categorical),
            source=self.source,
            notes=[*self.notes, note],
            value_names=self.value_names,
            feature_words=self.feature_words,
            store_through_encounter_id=self.store_through_encounter_id,
            outcome=self.outcome,
        )

    def training_rows(self, task: Task) -> np.ndarray:
        """Boolean mask of the rows a model is fitted on: all but the task's
        calibration-only landmarks."""
        if not task.calibration_landmarks_h or "landmark_h" not in self.meta:
            return np.ones(len(self.y), dtype=bool)
        landmark = self.meta["landmark_h"].to_numpy(dtype=float)
        return np.asarray(~np.isin(landmark, task.calibration_landmarks_h))

    def rows_at(self, landmark_h: float | None) -> np.ndarray:
        """Boolean mask of rows at one landmark (all rows when None or tabular)."""
        if landmark_h is None or "landmark_h" not in self.meta:
            return np.ones(len(self.y), dtype=bool)
        return np.asarray(self.meta["landmark_h"].to_numpy() == landmark_h)


def row_digests(X: pd.DataFrame) -> np.ndarray:
    """A 64-bit digest of each row's values (in ``X``'s column order).

    Why: the fingerprint says only whether a whole data set is the training data; these
    say which rows are, so that ``evaluate`` also refuses data that merely contains the
    training rows (set A with set B appended, the training file plus new patients). A
    row's digest is of its feature values only: no identifier, no label.
    """
    return np.asarray(pd.util.hash_pandas_object(X, index=False), dtype=np.uint64)


def fingerprint_of(X: pd.DataFrame, y: np.ndarray) -> str:
    """sha256 of a feature matrix (values and column names, in order) and its labels."""
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    h.update(np.asarray(y, dtype=np.int8).tobytes())
    h.update(",".join(X.columns).encode())
    return h.hexdigest()


def age_band(age: float | None) -> str:
    if age is None or age != age:
        return "unknown"
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    return "unknown"


def timeseries_dataset(
    task: Task,
    stays: Mapping[str, StayInput],
    labels: Mapping[str, float],
    groups: Mapping[str, str],
    *,
    landmarks_h: tuple[float, ...] | None = None,
    ends_at: Mapping[str, datetime | None] | None = None,
    source: str = "",
) -> Dataset:
    """Feature rows at each landmark of each labelled stay."""
    labelled = {k: s for k, s in stays.items() if k in labels}
    if not labelled:
        raise TaskError(f"{task.name}: no stay has a {task.outcome_kind} outcome")
    frame = build_feature_frame(labelled, landmarks_h or task.all_landmarks_h, ends_at=ends_at)
    ids = frame["stay_id"].to_numpy()
    y = np.array([int(labels[s]) for s in ids], dtype=np.int64)
    meta = pd.DataFrame(
        {
            "stay_id": ids,
            "landmark_h": frame["landmark_h"].to_numpy(),
            "sex": [labelled[s].sex for s in ids],
            "age_band": [age_band(labelled[s].age_years) for s in ids],
            "unit": [labelled[s].unit or "unknown" for s in ids],
        }
    )
    X = frame.drop(columns=["stay_id", "landmark_h"])
    return Dataset(
        X=X,
        y=y,
        groups=np.array([groups[s] for s in ids]),
        meta=meta,
        numeric=list(X.columns),
        source=source,
    )


def load_physionet(
    data: Path, outcomes: Path | None, *, limit: int | None = None
) -> tuple[dict[str, StayInput], dict[str, float], dict[str, str], list[str]]:
    """Stays, in-hospital death labels and patient groups from challenge files.

    Values and the stays' height and weight go through the ingestion rules (units,
    plausibility) exactly as stored data would; the counts of dropped values come back
    as notes. ``limit`` reads only the first records of the archive (in archive order):
    quick real-data tests.

    Raises:
        TaskError: the files are not in the challenge format.
    """
    now = datetime.now(UTC)
    stays: dict[str, StayInput] = {}
    groups: dict[str, str] = {}
    rejected = 0
    try:
        for record in iter_records(data):
            if limit is not None and len(stays) >= limit:
                break
            batch = parse_record(record)
            enc, dropped = drop_implausible_descriptors(batch.encounters[0])
            rejected += len(batch.rejected) + len(dropped)
            obs: list[tuple[str, float, datetime]] = []
            for o in batch.observations:
                try:
                    clean = check_observation(o, now=now)
                except Invalid:
                    rejected += 1
                    continue
                if clean.value is not None:
                    obs.append((clean.code, clean.value, clean.effective_at))
            obs.sort(key=lambda t: t[2])
            stays[enc.ref] = StayInput(
                admitted_at=enc.admitted_at,
                age_years=enc.age_years,
                sex=batch.patients[0].sex,
                unit=enc.unit,
                height_cm=enc.height_cm,
                weight_kg=enc.weight_kg,
                observations=tuple(obs),
            )
            groups[enc.ref] = enc.patient_ref
    except PhysionetFormatError as exc:
        raise TaskError(f"--data is not PhysioNet 2012 data: {exc}") from None
    if not stays:
        raise TaskError(f"{data}: no PhysioNet record files found")
    labels: dict[str, float] = {}
    if outcomes is not None:
        try:
            text = outcomes.read_text(encoding="utf-8")
            out = parse_outcomes(text, name=outcomes.name)
        except (OSError, UnicodeDecodeError, PhysionetFormatError) as exc:
            raise TaskError(f"--outcomes cannot be read: {exc}") from None
        labels = {o.encounter_ref: o.value for o in out.outcomes if o.kind == "in_hospital_death"}
    notes = [f"{len(stays)} stays read; {rejected} values rejected by ingestion rules"]
    missing = len(set(stays) - set(labels))
    if outcomes is not None and missing:
        notes.append(f"{missing} stays without an outcome were left out")
    return stays, labels, groups, notes


def load_stays_from_db(
    session: Session, outcome_kind: str, *, after_encounter_id: int | None = None
) -> tuple[dict[str, StayInput], dict[str, float], dict[str, str], dict[str, datetime | None]]:
    """Labelled encounters of the store, their observations, patients and end times.

    ``after_encounter_id``: only encounters stored after that one (a higher id) of
    patients with no labelled encounter up to it: the stays a model trained on the store
    through that encounter never saw, of patients it never saw.

    A stay its source withdrew (entered in error, a cancelled admission) is no stay at all:
    it neither trains nor validates a model.
    """
    query = (
        select(Encounter, Patient.sex, Outcome.value)
        .join(Patient, Patient.id == Encounter.patient_id)
        .join(Outcome, (Outcome.encounter_id == Encounter.id) & (Outcome.kind == outcome_kind))
        .where(Encounter.withdrawn_at.is_(None))
        .order_by(Encounter.id)
    )
    if after_encounter_id is not None:
        seen = aliased(Encounter)
        seen_patients = (
            select(seen.patient_id)
            .join(Outcome, (Outcome.encounter_id == seen.id) & (Outcome.kind == outcome_kind))
            .where(seen.id <= after_encounter_id)
        )
        query = query.where(
            Encounter.id > after_encounter_id, Encounter.patient_id.not_in(seen_patients)
        )
    rows = session.execute(query).all()
    stays: dict[str, StayInput] = {}
    labels: dict[str, float] = {}
    groups: dict[str, str] = {}
    ends: dict[str, datetime | None] = {}
    obs_by_enc: dict[int, list[tuple[str, float, datetime]]] = {enc.id: [] for enc, _s, _v in rows}
    if obs_by_enc:
        q = (
            select(
                Observation.encounter_id,
                Observation.code,
                Observation.value,
                Observation.effective_at,
            )
            .where(Observation.value.is_not(None))
            .order_by(Observation.encounter_id, Observation.effective_at, Observation.id)
        )
        if after_encounter_id is not None:
            q = q.where(Observation.encounter_id > after_encounter_id)
        for enc_id, code, value, at in session.execute(q).yield_per(20000):
            bucket = obs_by_enc.get(enc_id) if enc_id is not None else None
            if bucket is not None and value is not None:
                bucket.append((code, value, at))
    for enc, sex, value in rows:
        key = str(enc.id)
        stays[key] = StayInput(
            admitted_at=enc.admitted_at,
            age_years=enc.age_years,
            sex=sex,
            unit=enc.unit,
            height_cm=enc.height_cm,
            weight_kg=enc.weight_kg,
            observations=tuple(obs_by_enc[enc.id]),
        )
        labels[key] = value
        groups[key] = str(enc.patient_id)
        ends[key] = enc.discharged_at
    return stays, labels, groups, ends
