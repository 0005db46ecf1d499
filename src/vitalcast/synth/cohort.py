"""The synthetic ICU cohort: who is admitted, how sick, for how long, and who dies.

Stays look like PhysioNet 2012 set A in their mix (PROVENANCE of ../shared/data): ICU
types MICU 37 %, SICU 27 %, CSRU 22 %, CCU 14 %; median age 67 with ages above 89 shown
as 90 (HIPAA Safe Harbor); 56 % men; height missing in about half the stays and weight
in 8 %; in-hospital death 14 %, lowest after cardiac surgery (CSRU 5 %) and highest in
the medical ICU (19 %).

Death is drawn from a logistic model of a latent acuity, age and unit, with the intercept
solved so that the cohort's expected mortality is exactly :data:`DEATH_RATE`; the
observations then follow from the same latent state (see :mod:`.physiology`), so a model
can learn the risk from data, but not perfectly (a realistic AUROC, not 0.99).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from vitalcast.clinical.codes import ICU_TYPES
from vitalcast.clinical.records import (
    EncounterRecord,
    OutcomeRecord,
    PatientRecord,
    RecordBatch,
    Sex,
)
from vitalcast.synth.identity import make_identity
from vitalcast.synth.stay import StayPlan, stay_observations

logger = logging.getLogger(__name__)

SOURCE = "synth"
DEATH_RATE = 0.14
FIRST_RECORD_ID = 200_001  # above PhysioNet 2012's RecordIDs (132539-163037)

_UNIT_SHARE = {3: 0.37, 4: 0.27, 2: 0.22, 1: 0.14}  # ICUType -> share of stays
_UNIT_LOGIT = {3: 0.25, 4: 0.0, 2: -1.3, 1: 0.0}  # CSRU (2) has the lowest mortality
_ACUITY_LOGIT = 1.1  # per SD of latent acuity
_AGE_LOGIT = 0.035  # per year above 65
_HISTORIC_YEARS = 2.0  # historic discharges spread over this many years before now


@dataclass(frozen=True, slots=True)
class _Population:
    icu_type: np.ndarray
    age: np.ndarray
    male: np.ndarray
    acuity: np.ndarray
    died: np.ndarray


def generate_cohort(
    *,
    n_current: int,
    n_historic: int,
    seed: int,
    now: datetime,
    first_record_id: int = FIRST_RECORD_ID,
    history_days: float = _HISTORIC_YEARS * 365,
    death_rate: float = DEATH_RATE,
) -> RecordBatch:
    """Generate ``n_historic`` completed stays with outcomes and ``n_current`` open stays.

    Historic stays lasted 48-240 h, ended in the ``history_days`` before ``now`` (two
    years by default) and carry an in-hospital-death outcome known at discharge. Current
    stays were admitted 1-96 h before ``now`` and have
    observations up to ``now`` and no outcome. The result depends only on the arguments.
    Stays are numbered from ``first_record_id`` (their RecordID, reference
    ``synth:<RecordID>`` and MRN), so a second cohort in the same store must start after
    the first one's numbers. ``death_rate`` is the cohort's mean risk of in-hospital
    death (PhysioNet 2012's 14 % by default); a sicker cohort gives a test enough outcome
    events from fewer stays.

    Raises:
        ValueError: negative counts, a naive ``now`` or a death rate outside (0, 1).
    """
    if n_current < 0 or n_historic < 0:
        raise ValueError("stay counts must not be negative")
    if first_record_id < 1:
        raise ValueError("first_record_id must be positive")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if history_days <= 0:
        raise ValueError("history_days must be positive")
    if not 0 < death_rate < 1:
        raise ValueError("death_rate must lie strictly between 0 and 1")
    now = now.astimezone(UTC).replace(second=0, microsecond=0)
    n = n_current + n_historic
    pop_seq, stay_seq = np.random.SeedSequence(seed).spawn(2)
    pop = _draw_population(n, np.random.default_rng(pop_seq), death_rate)
    batch = RecordBatch()
    for i, child in enumerate(stay_seq.spawn(n)):
        rng = np.random.default_rng(child)
        plan = _plan_stay(
            i, pop, historic=i >= n_current, now=now, rng=rng, history_h=history_days * 24
        )
        plan = replace(plan, record_id=first_record_id + i, ref=f"{SOURCE}:{first_record_id + i}")
        _add_stay(batch, plan, rng)
    deaths = sum(1 for o in batch.outcomes if o.value == 1.0)
    logger.info(
        "synthetic cohort generated",
        extra={
            "seed": seed,
            "current_stays": n_current,
            "historic_stays": n_historic,
            "historic_deaths": deaths,
            "observations": len(batch.observations),
        },
    )
    return batch


def _draw_population(n: int, rng: np.random.Generator, death_rate: float) -> _Population:
    types = np.array(list(_UNIT_SHARE))
    icu_type = rng.choice(types, size=n, p=np.array(list(_UNIT_SHARE.values())))
    # Beta-shaped adult ages, left-skewed like the ICU population; > 89 recorded as 90.
    age = np.minimum(np.floor(16 + 76 * rng.beta(2.0, 1.05, size=n)), 90).astype(int)
    age = np.maximum(age, 18)
    male = rng.random(n) < 0.56
    acuity = rng.normal(size=n)
    unit = np.array([_UNIT_LOGIT[int(t)] for t in icu_type])
    eta = _ACUITY_LOGIT * acuity + _AGE_LOGIT * (age - 65) + unit
    intercept = _solve_intercept(eta, death_rate) if n else 0.0
    died = rng.random(n) < _sigmoid(intercept + eta)
    return _Population(icu_type, age, male, acuity, died)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return result


def _solve_intercept(eta: np.ndarray, rate: float) -> float:
    """Intercept giving mean risk ``rate`` over this cohort (bisection; risk is monotone)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(_sigmoid(mid + eta).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _plan_stay(
    i: int,
    pop: _Population,
    *,
    historic: bool,
    now: datetime,
    rng: np.random.Generator,
    history_h: float,
) -> StayPlan:
    died = bool(pop.died[i])
    icu_type = int(pop.icu_type[i])
    if historic:
        # ICU stays of 2-10 days (PhysioNet 2012 keeps stays of at least 48 h), median
        # about 3 days with a long right tail.
        los_h = float(min(48.0 + rng.lognormal(np.log(30.0), 0.9), 240.0))
        end_ago_h = float(rng.uniform(1.0, history_h))
        observed_h = los_h
    else:
        observed_h = float(rng.uniform(1.0, 96.0))
        los_h = observed_h + float(rng.uniform(0.5, 96.0))  # the stay's (future) end
        end_ago_h = 0.0
    observed_min = int(observed_h * 60)
    admitted_at = now - timedelta(minutes=int(end_ago_h * 60) + observed_min)
    height: float | None = None
    if rng.random() < 0.53:
        mean = 176.0 if pop.male[i] else 162.0
        height = round(float(np.clip(rng.normal(mean, 7.5), 140, 205)), 1)
    weight: float | None = None
    if rng.random() < 0.92:
        weight = round(float(np.clip(rng.lognormal(np.log(80.0), 0.25), 38, 220)), 1)
    return StayPlan(
        record_id=FIRST_RECORD_ID + i,
        ref=f"{SOURCE}:{FIRST_RECORD_ID + i}",
        historic=historic,
        admitted_at=admitted_at,
        observed_minutes=observed_min,
        los_hours=los_h,
        died=died,
        icu_type=icu_type,
        age_years=int(pop.age[i]),
        sex="male" if pop.male[i] else "female",
        height_cm=height,
        weight_kg=weight,
        acuity=float(pop.acuity[i]),
    )


def _add_stay(batch: RecordBatch, plan: StayPlan, rng: np.random.Generator) -> None:
    ident = make_identity(
        plan.record_id, age_years=plan.age_years, admitted_on=plan.admitted_at.date(), rng=rng
    )
    sex: Sex = plan.sex
    batch.patients.append(
        PatientRecord(
            ref=plan.ref,
            sex=sex,
            mrn=ident.mrn,
            name=ident.name,
            birth_date=ident.birth_date,
            address=ident.address,
            phone=ident.phone,
            email=ident.email,
            source_ref=plan.ref,
        )
    )
    discharged_at = plan.admitted_at + timedelta(minutes=plan.observed_minutes)
    batch.encounters.append(
        EncounterRecord(
            ref=plan.ref,
            patient_ref=plan.ref,
            admitted_at=plan.admitted_at,
            discharged_at=discharged_at if plan.historic else None,
            kind="icu",
            unit=ICU_TYPES[plan.icu_type],
            age_years=float(plan.age_years),
            height_cm=plan.height_cm,
            weight_kg=plan.weight_kg,
            source_ref=plan.ref,
        )
    )
    observations = stay_observations(plan, rng)
    batch.observations.extend(observations)
    batch.received += 2 + len(observations)
    if plan.historic:
        # Death or discharge alive is known when the patient leaves hospital.
        batch.outcomes.append(
            OutcomeRecord(
                patient_ref=plan.ref,
                encounter_ref=plan.ref,
                kind="in_hospital_death",
                value=1.0 if plan.died else 0.0,
                occurred_at=discharged_at,
                known_at=discharged_at,
                source_ref=plan.ref,
            )
        )
        batch.received += 1
