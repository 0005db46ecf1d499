"""Readmission risk of stored encounters: the training features, computed from the store.

A discharged encounter is scored by the ``readmission-30d`` champion from what the store
holds: its length of stay, age, the patient's sex, its attributes, its coded diagnoses and
the patient's earlier encounters, folded in :func:`~vitalcast.features.encounter.encounter_order`
with :func:`~vitalcast.features.encounter.after_encounter`. Those are the functions the
training loader (:func:`vitalcast.modeling.tabular.load_readmission`) applies to the file,
and ``tests/integration/test_encounter_scoring.py`` checks that an ingested export gives the
training features, encounter by encounter.

Only hospital (``inpatient``) encounters are the task's: the model learnt from Diabetes 130
inpatient stays, so an ICU stay, an emergency or an outpatient visit is neither scored nor
part of the history (an ICU stay inside a hospital admission would count that admission
twice).

An earlier encounter's own readmission is its stored ``readmission_30d`` outcome (the export
records it); without one, it is read from the dates: another admission of the patient
within 30 days of its discharge. Either is known by the time of any later admission.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Condition, Encounter, Outcome, Patient
from vitalcast.features.encounter import (
    EncounterInput,
    PriorHistory,
    after_encounter,
    diagnoses_by_slot,
    encounter_order,
    in_readmission_cohort,
    readmission_features,
)
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import TASKS
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.scoring import features_digest, in_population, record_prediction

READMISSION_TASK = "readmission-30d"
READMISSION_WINDOW = timedelta(days=30)
READMISSION_POPULATION = TASKS[READMISSION_TASK].population


@lru_cache(maxsize=8)
def _diagnosis_slots(source: str) -> tuple[str, ...]:
    """The diagnosis columns of the CSV profile named like the encounter's source."""
    from vitalcast.ingest.sources.csv import load_profile, shipped_profiles

    if source not in shipped_profiles():
        return ()
    profile = load_profile(source)
    return tuple(profile.conditions.columns) if profile.conditions else ()


def _stay_days(encounter: Encounter) -> float | None:
    if encounter.discharged_at is None:
        return None
    return (encounter.discharged_at - encounter.admitted_at).total_seconds() / 86400.0


def encounter_inputs(session: Session, patient_id: int) -> list[tuple[Encounter, EncounterInput]]:
    """Every discharged hospital encounter of a patient as the readmission features read
    it, in encounter order: each with the history of the encounters before it."""
    encounters = sorted(
        session.scalars(
            select(Encounter).where(
                Encounter.patient_id == patient_id, in_population(READMISSION_POPULATION)
            )
        ).all(),
        key=lambda e: encounter_order(e.admitted_at, e.source_ref),
    )
    if not encounters:
        return []
    sex = session.scalar(select(Patient.sex).where(Patient.id == patient_id)) or "unknown"
    coded: dict[int | None, list[tuple[str, str]]] = {}
    for encounter_id, source_ref, code in session.execute(
        select(Condition.encounter_id, Condition.source_ref, Condition.code)
        .where(Condition.patient_id == patient_id, Condition.encounter_id.is_not(None))
        .order_by(Condition.id)
    ):
        coded.setdefault(encounter_id, []).append((source_ref, code))
    outcomes = dict(
        session.execute(
            select(Outcome.encounter_id, Outcome.value).where(
                Outcome.patient_id == patient_id, Outcome.kind == "readmission_30d"
            )
        ).all()
    )
    admissions = [e.admitted_at for e in encounters]
    history = PriorHistory()
    inputs: list[tuple[Encounter, EncounterInput]] = []
    for enc in encounters:
        if enc.discharged_at is None:
            continue  # still in hospital: neither scored nor (yet) history
        current = EncounterInput(
            length_of_stay_days=_stay_days(enc),
            age_years=enc.age_years,
            sex=sex,
            attributes=enc.attributes or {},
            diagnoses=diagnoses_by_slot(coded.get(enc.id, ()), _diagnosis_slots(enc.source)),
            history=history,
        )
        inputs.append((enc, current))
        if enc.id in outcomes:
            readmitted = outcomes[enc.id] == 1.0
        else:
            end = enc.discharged_at
            readmitted = any(end < at <= end + READMISSION_WINDOW for at in admissions)
        history = after_encounter(history, current, readmitted)
    return inputs


class OutsideCohort(Exception):
    """The patient cannot be scored for readmission; the message says why (no
    identifiers)."""


def latest_discharge(session: Session, patient_id: int) -> tuple[Encounter, EncounterInput]:
    """The patient's most recent discharged hospital encounter, with its features' input.

    Raises:
        OutsideCohort: no discharged hospital encounter, or the last one ended in death or
            hospice.
    """
    inputs = encounter_inputs(session, patient_id)
    if not inputs:
        raise OutsideCohort("the patient has no discharged inpatient encounter")
    last, current = inputs[-1]
    if not in_readmission_cohort(current.attributes):
        raise OutsideCohort(
            "the patient's latest encounter ended in death or hospice, outside the"
            f" {READMISSION_TASK} cohort"
        )
    return last, current


def score_readmission(
    session: Session, predictor: Predictor, encounter: Encounter, features: dict[str, Any]
) -> Prediction:
    """Store the readmission champion's score of a discharged encounter's features (from
    :func:`latest_discharge`'s input) against that encounter."""
    return record_prediction(
        session,
        predictor,
        features,
        role="champion",
        as_of=encounter.discharged_at or encounter.admitted_at,
        freshness=encounter.discharged_at,
        encounter=encounter,
    )


def current_readmission(
    session: Session, predictor: Predictor, patient_id: int
) -> tuple[Prediction, bool] | None:
    """The readmission risk of the patient's latest discharge by ``predictor``, and whether
    it was scored just now: a stored prediction is reused while the model and the
    features (history included: a back-filled earlier encounter changes them) are the
    same. None outside the cohort."""
    try:
        encounter, current = latest_discharge(session, patient_id)
    except OutsideCohort:
        return None
    features = readmission_features(current)
    stored = session.scalar(
        select(Prediction)
        .where(
            Prediction.encounter_id == encounter.id,
            Prediction.task == READMISSION_TASK,
            Prediction.role == "champion",
            Prediction.model_version_id == predictor.model_version_id,
            Prediction.features_digest == features_digest(features),
        )
        .order_by(Prediction.id.desc())
        .limit(1)
    )
    if stored is not None:
        return stored, False
    return score_readmission(session, predictor, encounter, features), True
