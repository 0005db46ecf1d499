"""Scoring stored patients: features from the store as of a time, scored and recorded.

Features come from :func:`vitalcast.features.stay_features`, the same function training
uses, applied to the observations the store holds with effective time <= ``as_of``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_KEY
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.db.session import after_commit
from vitalcast.db.types import new_public_id
from vitalcast.features import StayInput, stay_features
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import STAY_TASK, Population, get_task
from vitalcast.monitoring.metrics import observe_prediction
from vitalcast.serving.predictor import Predictor


def served_population(settings: Settings, task: str = STAY_TASK) -> Population | None:
    """Whom ``task``'s model scores in this deployment: the task's population
    (:class:`~vitalcast.modeling.tasks.Population`), for the stay task on the units of
    ``VITALCAST_STAY_UNITS`` when it names any. None: no restriction (``tabular``)."""
    population = get_task(task).population  # tabular:NAME too (no population)
    if population is None or task != STAY_TASK:
        return population
    return population.on_units(settings.stay_units)


def in_population(population: Population | None) -> ColumnElement[bool]:
    """SQL condition on :class:`Encounter`: inside ``population`` (kinds of encounter,
    ages, units). Every query that picks encounters to score uses it, so an outpatient
    visit or a child's stay in progress is never scored, live or in a rescoring pass.
    A stay its source withdrew (``Encounter.withdrawn_at``) is in no population."""
    withdrawn_out = Encounter.withdrawn_at.is_(None)
    if population is None:
        return withdrawn_out
    conditions: list[ColumnElement[bool]] = [
        withdrawn_out,
        Encounter.kind.in_(sorted(population.encounter_kinds)),
    ]
    if population.min_age_years is not None:
        conditions.append(
            or_(Encounter.age_years.is_(None), Encounter.age_years >= population.min_age_years)
        )
    if population.units:
        conditions.append(Encounter.unit.in_(sorted(population.units)))
    return and_(*conditions)


def outside_population(
    population: Population | None, kind: str, age_years: float | None, unit: str | None
) -> str | None:
    """Why an encounter is not scored, as a sentence a clinician reads ("An outpatient
    visit is outside what the model scores: ICU and hospital stays of patients aged 15 or
    over."); None when it is inside. The rule of :func:`in_population`, for one encounter
    already read."""
    reason = population.exclusion(kind, age_years, unit) if population is not None else None
    if reason is None or population is None:
        return None
    return outside_sentence(population, reason)


def outside_sentence(population: Population, reason: str) -> str:
    """``reason`` ("an outpatient visit") as the sentence every surface shows."""
    return f"{reason[0].upper()}{reason[1:]} is outside what the model scores: {population.label}."


def stay_outside_population(settings: Settings, encounter: Encounter | None) -> str | None:
    """Why the stay model does not score ``encounter`` in this deployment (None: it does,
    or there is no encounter): what the API, the patient page and a prediction request
    say instead of a risk."""
    if encounter is None:
        return None
    if encounter.withdrawn_at is not None:
        return (
            f"This stay was withdrawn by its source ({encounter.withdrawn_reason}): the"
            " record says it never was a stay, so it is not scored."
        )
    return outside_population(
        served_population(settings), encounter.kind, encounter.age_years, encounter.unit
    )


def stay_input(session: Session, encounter: Encounter, as_of: datetime) -> StayInput:
    """The encounter's descriptors and observations up to ``as_of``, as the feature input."""
    rows = session.execute(
        select(Observation.code, Observation.value, Observation.effective_at)
        .where(
            Observation.encounter_id == encounter.id,
            Observation.effective_at <= as_of,
            Observation.value.is_not(None),
        )
        .order_by(Observation.effective_at, Observation.id)
    ).all()
    sex = session.scalar(select(Patient.sex).where(Patient.id == encounter.patient_id))
    return StayInput(
        admitted_at=encounter.admitted_at,
        age_years=encounter.age_years,
        sex=sex or "unknown",
        unit=encounter.unit,
        height_cm=encounter.height_cm,
        weight_kg=encounter.weight_kg,
        observations=tuple(
            (code, float(value), at) for code, value, at in rows if value is not None
        ),
    )


def admission_descriptors(
    session: Session, encounter: Encounter
) -> tuple[float | None, float | None]:
    """The stay's height and admission weight as the model reads them (shown beside the
    risk): the encounter's descriptors, else the first height charted in the stay and a
    weight charted at the admission instant (the rule of
    :func:`vitalcast.features.stay._descriptors`; a test keeps the two equal). A FHIR or
    HL7 stay has no descriptors, so its page showed none though the model used both."""
    height, weight = encounter.height_cm, encounter.weight_kg
    charted = select(Observation.value).where(
        Observation.encounter_id == encounter.id, Observation.value.is_not(None)
    )
    if height is None:
        height = session.scalar(
            charted.where(
                Observation.code == BY_KEY["height"].code,
                Observation.effective_at >= encounter.admitted_at,  # the stay's own
            )
            .order_by(Observation.effective_at, Observation.id)
            .limit(1)
        )
    if weight is None:
        weight = session.scalar(
            charted.where(
                Observation.code == BY_KEY["weight"].code,
                Observation.effective_at == encounter.admitted_at,
            )
            .order_by(Observation.id)
            .limit(1)
        )
    return height, weight


def features_digest(features: Mapping[str, Any]) -> str:
    """A stable fingerprint of a feature vector (missing values written as null)."""

    def clean(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return round(value, 10) if isinstance(value, int | float) else str(value)

    body = {k: clean(v) for k, v in sorted(features.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def score_encounter(
    session: Session,
    predictor: Predictor,
    encounter: Encounter,
    *,
    as_of: datetime | None = None,
    role: str = "champion",
) -> Prediction:
    """Score an encounter as of ``as_of`` (default now) and store the prediction."""
    as_of = as_of or utcnow()
    stay = stay_input(session, encounter, as_of)
    features = stay_features(stay, as_of)
    freshness = stay.observations[-1][2] if stay.observations else None
    return record_prediction(
        session,
        predictor,
        features,
        role=role,
        as_of=as_of,
        freshness=freshness,
        encounter=encounter,
    )


def record_prediction(
    session: Session,
    predictor: Predictor,
    features: Mapping[str, Any],
    *,
    role: str,
    as_of: datetime,
    freshness: datetime | None = None,
    encounter: Encounter | None = None,
    explain: bool = True,
) -> Prediction:
    """Score ``features`` and store the prediction with what it was based on."""
    result = predictor.score(features, explain=explain)
    prediction = Prediction(
        public_id=new_public_id(),
        patient_id=encounter.patient_id if encounter is not None else None,
        encounter_id=encounter.id if encounter is not None else None,
        model_version_id=predictor.model_version_id,
        task=predictor.task,
        role=role,
        score=result.probability,
        band=result.band,
        as_of=as_of,
        data_freshness_at=freshness,
        features_digest=features_digest(features),
        explanation=result.factors,
        missing_inputs=result.missing,
    )
    session.add(prediction)
    session.flush()
    after_commit(
        session,
        lambda: observe_prediction(model_version=predictor.version, band=result.band, role=role),
    )
    return prediction
