"""Read models of patients for the API and the ward page."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.modeling.tables import Prediction, public_probability
from vitalcast.modeling.tasks import STAY_POPULATION, STAY_TASK, Population
from vitalcast.security.crypto import FieldCipher
from vitalcast.serving.scoring import outside_population


@dataclass(frozen=True)
class WardRow:
    """One in-progress stay with its latest champion risk."""

    patient_id: str
    encounter_id: str
    unit: str | None
    age_years: float | None
    sex: str
    admitted_at: datetime
    score: float | None
    band: str | None
    scored_at: datetime | None
    data_freshness_at: datetime | None
    model_version_id: int | None
    missing_inputs: list[str]
    identifiers: dict[str, str] | None = None
    task: str | None = None  # the task of the latest risk
    # Why the stay model does not score this encounter (:func:`outside_population`).
    outside_population: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.patient_id,
            "encounter_id": self.encounter_id,
            "unit": self.unit,
            "age_years": None if self.age_years is None else round(self.age_years),
            "sex": self.sex,
            "admitted_at": self.admitted_at.isoformat(),
            "identifiers": self.identifiers,
            "risk": None
            if self.score is None
            else {
                "probability": public_probability(self.score),
                "band": self.band,
                "as_of": self.scored_at.isoformat() if self.scored_at else None,
                "data_freshness_at": self.data_freshness_at.isoformat()
                if self.data_freshness_at
                else None,
                "missing_inputs": len(self.missing_inputs),
            },
            "outside_population": self.outside_population,
        }


def _latest_prediction_id() -> Any:
    """The id of the listed encounter's newest champion prediction (correlated, per row).

    One backward scan of ``ix_predictions_encounter_time`` per listed stay, so the ward's
    cost follows the number of stays in progress, not the number of predictions ever
    stored. The previous form, ``max(id) GROUP BY encounter_id`` over every champion
    prediction (discharged stays included), grew with the history and, when PostgreSQL's
    statistics were stale, was re-aggregated once per listed stay: 630 ms of the 520-stay
    ward page (docs/benchmarks.md).
    """
    return (
        select(Prediction.id)
        .where(
            Prediction.encounter_id == Encounter.id,
            Prediction.role == "champion",
            Prediction.task == STAY_TASK,
        )
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(1)
        .correlate(Encounter)
        .scalar_subquery()
    )


def _open_stays(
    unit: str | None,
    mrn_hmac: str | None = None,
    patient_public_id: str | None = None,
    units: Collection[str] = (),
) -> Any:
    """The filter of the ward: stays in progress, optionally one unit, MRN or patient.

    ``units`` are the caller's units (empty: all). They are a condition of the query,
    not a filter of its result, so that paging, totals and a ``unit`` outside them
    (which matches nothing) can never show another unit's stays.
    """
    conditions: list[ColumnElement[bool]] = [Encounter.in_progress.expression]
    if units:
        conditions.append(Encounter.unit.in_(sorted(units)))
    if unit:
        conditions.append(Encounter.unit == unit)
    if mrn_hmac:
        conditions.append(Patient.mrn_hmac == mrn_hmac)
    if patient_public_id:
        conditions.append(Patient.public_id == patient_public_id)
    return and_(*conditions)


def list_ward(
    session: Session,
    *,
    unit: str | None = None,
    limit: int = 50,
    offset: int = 0,
    cipher: FieldCipher | None = None,
    mrn_hmac: str | None = None,
    patient_public_id: str | None = None,
    units: Collection[str] = (),
    population: Population | None = STAY_POPULATION,
) -> tuple[list[WardRow], int]:
    """In-progress stays, highest current risk first; with identifiers when a cipher is given.

    A stay outside ``population`` (the deployment's: :func:`.scoring.served_population`) is listed
    with the reason and without a risk.

    ``units`` are the units the caller is bound to (empty: every unit); every caller
    passes its principal's, so a unit-bound user never sees another unit's stays.
    ``mrn_hmac`` restricts the list to the patient whose keyed MRN hash matches (exact MRN
    search without decrypting anyone); ``patient_public_id`` to one patient's stay (the
    live ward row).

    Two set-based reads whatever the ward size: the open stays with the id of each one's
    newest champion prediction, then those predictions by primary key. The sort by risk
    is done here, on the (hundreds of) stays in progress; a join of the scores in SQL let
    the planner hash the whole predictions table.
    """
    # Columns, not entities: the ward lists hundreds of stays, and loading full ORM
    # objects (with every prediction's explanation JSON) cost more than the queries.
    stays = session.execute(
        select(
            Encounter.id,
            Encounter.public_id,
            Encounter.unit,
            Encounter.age_years,
            Encounter.admitted_at,
            Patient.public_id,
            Patient.sex,
            _latest_prediction_id(),
            Encounter.kind,
        )
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(_open_stays(unit, mrn_hmac, patient_public_id, units))
    ).all()
    # A stay outside the stay model's population shows no risk, not even one stored
    # before the population rule existed.
    outside = {s[0]: outside_population(population, s[8], s[3], s[2]) for s in stays}
    latest_ids = [s[7] for s in stays if s[7] is not None and outside[s[0]] is None]
    scores = (
        {
            r.id: r
            for r in session.execute(
                select(
                    Prediction.id,
                    Prediction.score,
                    Prediction.band,
                    Prediction.as_of,
                    Prediction.data_freshness_at,
                    Prediction.model_version_id,
                    Prediction.missing_inputs,
                    Prediction.task,
                ).where(Prediction.id.in_(latest_ids))
            )
        }
        if latest_ids
        else {}
    )

    def risk_order(stay: Any) -> tuple[bool, float, int]:
        pred = scores.get(stay[7])
        return (pred is None, -pred.score if pred is not None else 0.0, stay[0])

    page = sorted(stays, key=risk_order)[offset : offset + limit]
    blobs: dict[str, tuple[bytes | None, str | None]] = {}
    if cipher is not None and page:
        blobs = {
            public_id: (blob, key_id)
            for public_id, blob, key_id in session.execute(
                select(Patient.public_id, Patient.identifiers_enc, Patient.key_id).where(
                    Patient.public_id.in_([s[5] for s in page])
                )
            )
        }
    rows = []
    for stay_id, enc_id, unit_name, age, admitted_at, patient_id, sex, pred_id, _kind in page:
        identifiers = None
        if cipher is not None:
            blob, key_id = blobs.get(patient_id, (None, None))
            identifiers = (
                cipher.decrypt(blob, key_id, context=f"patient:{patient_id}")
                if blob is not None and key_id is not None
                else {}
            )
        pred = scores.get(pred_id)
        rows.append(
            WardRow(
                patient_id=patient_id,
                encounter_id=enc_id,
                unit=unit_name,
                age_years=age,
                sex=sex,
                admitted_at=admitted_at,
                score=None if pred is None else pred.score,
                band=None if pred is None else pred.band,
                scored_at=None if pred is None else pred.as_of,
                data_freshness_at=None if pred is None else pred.data_freshness_at,
                model_version_id=None if pred is None else pred.model_version_id,
                missing_inputs=[] if pred is None else list(pred.missing_inputs or []),
                identifiers=identifiers,
                task=None if pred is None else pred.task,
                outside_population=outside[stay_id],
            )
        )
    return rows, len(stays)


def decrypt_identifiers(cipher: FieldCipher, patient: Patient) -> dict[str, str]:
    """A patient's direct identifiers in clear (callers must hold identifiers:read)."""
    if patient.identifiers_enc is None or patient.key_id is None:
        return {}
    return cipher.decrypt(
        patient.identifiers_enc, patient.key_id, context=f"patient:{patient.public_id}"
    )


def ward_units(session: Session, units: Collection[str] = ()) -> list[str]:
    """Units that have patients in progress (of ``units`` only, when the caller has any)."""
    query = select(Encounter.unit).where(and_(Encounter.in_progress, Encounter.unit.is_not(None)))
    if units:
        query = query.where(Encounter.unit.in_(sorted(units)))
    rows = session.scalars(query.distinct().order_by(Encounter.unit)).all()
    return [r for r in rows if r]
