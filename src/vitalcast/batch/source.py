"""Stays from the store as one flat frame per stay: the input of the Spark scoring job.

Observations are packed into parallel arrays (codes, values, times in epoch microseconds)
so that Arrow carries them to the executors exactly: a datetime round-trips through an
integer number of microseconds without loss, which a float of seconds would not.
The selection mirrors :func:`vitalcast.serving.scoring.stay_input`: values present,
``effective_at <= as_of``, ordered by time then id.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.modeling.tasks import Population
from vitalcast.serving.scoring import in_population

STAY_COLUMNS = (
    "stay_id",
    "patient_id",
    "admitted_at_us",
    "age_years",
    "sex",
    "unit",
    "height_cm",
    "weight_kg",
    "obs_codes",
    "obs_values",
    "obs_times_us",
)

# Spark DDL of the input frame; the same columns a data-lake export must provide.
STAY_SCHEMA = (
    "stay_id string, patient_id string, admitted_at_us long, age_years double, sex string,"
    " unit string, height_cm double, weight_kg double, obs_codes array<string>,"
    " obs_values array<double>, obs_times_us array<long>"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(at: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _admitted_by(as_of: datetime, in_progress_only: bool) -> ColumnElement[bool]:
    """Encounters admitted by ``as_of`` (and, by default, still in progress then); never a
    stay its source withdrew (entered in error), which is scored at no time."""
    admitted = and_(Encounter.admitted_at <= as_of, Encounter.withdrawn_at.is_(None))
    if not in_progress_only:
        return admitted
    return and_(admitted, or_(Encounter.discharged_at.is_(None), Encounter.discharged_at > as_of))


def stays_frame(
    session: Session,
    *,
    as_of: datetime,
    in_progress_only: bool = True,
    population: Population | None = None,
) -> pd.DataFrame:
    """One row per encounter admitted by ``as_of`` (in progress at ``as_of`` by default)
    inside ``population``: the batch job scores whom the live path scores, never an
    outpatient visit or a child's stay (:func:`~vitalcast.serving.scoring.in_population`)."""
    query = (
        select(Encounter, Patient.public_id, Patient.sex)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(_admitted_by(as_of, in_progress_only), in_population(population))
        .order_by(Encounter.id)
    )
    encounters = session.execute(query).all()
    observations: dict[int, list[tuple[str, float, int]]] = defaultdict(list)
    wanted = [e.id for e, _, _ in encounters]
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        rows = session.execute(
            select(
                Observation.encounter_id,
                Observation.code,
                Observation.value,
                Observation.effective_at,
            )
            .where(
                Observation.encounter_id.in_(chunk),
                Observation.effective_at <= as_of,
                Observation.value.is_not(None),
            )
            .order_by(Observation.encounter_id, Observation.effective_at, Observation.id)
        )
        for encounter_id, code, value, at in rows:
            if encounter_id is not None and value is not None:  # both filtered in SQL
                observations[encounter_id].append((code, float(value), to_us(at)))
    records = []
    for encounter, patient_id, sex in encounters:
        obs = observations.get(encounter.id, [])
        records.append(
            {
                "stay_id": encounter.public_id,
                "patient_id": patient_id,
                "admitted_at_us": to_us(encounter.admitted_at),
                "age_years": encounter.age_years,
                "sex": sex or "unknown",
                "unit": encounter.unit,
                "height_cm": encounter.height_cm,
                "weight_kg": encounter.weight_kg,
                "obs_codes": [o[0] for o in obs],
                "obs_values": [o[1] for o in obs],
                "obs_times_us": [o[2] for o in obs],
            }
        )
    return pd.DataFrame.from_records(records, columns=list(STAY_COLUMNS))


def count_outside(
    session: Session,
    *,
    as_of: datetime,
    in_progress_only: bool = True,
    population: Population | None = None,
) -> int:
    """How many of the encounters :func:`stays_frame` considers are outside
    ``population`` and so left unscored (reported, never dropped silently)."""
    query = select(func.count()).where(
        _admitted_by(as_of, in_progress_only), not_(in_population(population))
    )
    return int(session.scalar(query.select_from(Encounter)) or 0)
