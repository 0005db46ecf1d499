"""Patient detail API: one patient, their risk history and their observations.

Every response here is a read of patient data and writes an audit event. Identifiers are
returned only to roles holding ``identifiers:read``; quarantined values are returned with
their reason so that charts can mark them instead of hiding them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.tables import Condition, Encounter, ImagingStudy, Observation, Patient
from vitalcast.errors import AppError, NotFound
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.modeling.tables import ModelVersion, Prediction, public_probability
from vitalcast.modeling.tasks import STAY_TASK
from vitalcast.security.permissions import Permission, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.encounter_scoring import READMISSION_TASK, current_readmission
from vitalcast.serving.openapi import operation
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.schemas import (
    HistoryQuery,
    ObservationList,
    ObservationsQuery,
    PatientDetail,
    PredictionHistory,
    parse_query,
)
from vitalcast.serving.scoring import stay_outside_population
from vitalcast.serving.state import get_state

patient_api = Blueprint("patient_api", __name__)


def patient_in_units(session: Session, patient_id: int, units: Collection[str]) -> bool:
    """Whether a unit-bound caller may see this patient (by internal id).

    A patient belongs to every unit they have had a stay in: a clinician of the unit that
    discharged a patient to another ward can still open that patient's record. Callers
    bound to no unit (``units`` empty) see everyone.
    """
    if not units:
        return True
    seen = session.scalar(
        select(Encounter.id)
        .where(Encounter.patient_id == patient_id, Encounter.unit.in_(list(units)))
        .limit(1)
    )
    return seen is not None


def get_patient_or_raise(session: Session, public_id: str) -> Patient:
    """The patient with this public id, visible to the caller, or NotFound.

    The one lookup every route taking a patient id goes through, so unit restriction is
    decided in one place. A patient outside the caller's units gets the very answer an
    unknown id gets (existence is not revealed); the attempt is audited as denied and
    committed at once, since the 404 rolls the request's unit of work back.
    """
    patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
    if patient is None:
        raise NotFound("no patient with that id")
    check_patient_visible(session, patient, refusal=NotFound("no patient with that id"))
    return patient


def check_patient_visible(session: Session, patient: Patient, *, refusal: AppError) -> None:
    """Raise ``refusal`` (audited as a denial) when the caller may not see ``patient``.

    For routes reached by another record's id (an encounter, a risk assessment, a device's
    binding). For an id, ``refusal`` is the very error the route raises for an id it does
    not know, so the answer for another unit's record is byte for byte the answer for no
    record, and the message never becomes the patient lookup's own. The denial is
    committed at once, since the error rolls the request's unit of work back.
    """
    if patient_in_units(session, patient.id, current_principal().units):
        return
    audit_event(
        "access.denied",
        "R",
        outcome="denied",
        patient_id=patient.public_id,
        resource=request.path,
        details={"reason": "outside the caller's units"},
        session=session,
    )
    session.commit()
    raise refusal  # do not reveal other units' records


def latest_encounter(session: Session, patient: Patient) -> Encounter | None:
    """The patient's newest encounter that was one: a stay its source withdrew (entered
    in error, cancelled) only when there is no other.

    Why: a duplicate admission entered in error and withdrawn was the newest, so the
    patient page (opened from the ward row of the stay in progress, 14 % High) said
    "Not scored. This stay was withdrawn", with no risk to see or acknowledge, and
    feedback and prediction requests were refused for a stay that was never real.
    """
    return session.scalar(
        select(Encounter)
        .where(Encounter.patient_id == patient.id)
        .order_by(Encounter.withdrawn_at.is_not(None), Encounter.admitted_at.desc())
        .limit(1)
    )


def discharge_risk(session: Session, patient: Patient) -> dict[str, Any] | None:
    """The readmission risk of the patient's latest discharge, when a readmission champion
    is loaded and that discharge is in the task's cohort (scored on first view, then
    reused: :func:`~vitalcast.serving.encounter_scoring.current_readmission`)."""
    predictor = get_state().task_champions.get(READMISSION_TASK)
    if predictor is None:
        return None
    found = current_readmission(session, predictor, patient.id)
    if found is None:
        return None
    prediction, scored = found
    if scored:
        audit_event(
            "prediction.served",
            "E",
            patient_id=patient.public_id,
            resource=f"Prediction/{prediction.public_id}",
        )
    encounter = session.get(Encounter, prediction.encounter_id)
    return {
        **prediction_dict(prediction, predictor.version),
        "encounter_id": encounter.public_id if encounter is not None else None,
        "threshold": predictor.threshold,
    }


def prediction_dict(p: Prediction, version: str | None = None) -> dict[str, Any]:
    return {
        "id": p.public_id,
        "probability": public_probability(p.score),
        "band": p.band,
        "as_of": p.as_of.isoformat(),
        "created_at": p.created_at.isoformat(),
        "data_freshness_at": p.data_freshness_at.isoformat() if p.data_freshness_at else None,
        "model_version": version,
        "factors": p.explanation or [],
        "missing": p.missing_inputs or [],
    }


@patient_api.get("/patients/<patient_id>")
@requires(Permission.PATIENTS_READ)
@operation(
    "One patient: stay, current risk, discharge risk, conditions, imaging",
    PatientDetail,
    tags=("patients",),
)
def patient_detail(patient_id: str) -> Response:
    """Demographics, the current stay, the current risk, conditions and imaging studies."""
    session = db()
    patient = get_patient_or_raise(session, patient_id)
    encounter = latest_encounter(session, patient)
    show_ids = role_allows(current_principal().role, Permission.IDENTIFIERS_READ)
    latest = None
    outside = stay_outside_population(get_state().settings, encounter)
    if encounter is not None and outside is None:
        row = session.execute(
            select(Prediction, ModelVersion.version)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(
                Prediction.encounter_id == encounter.id,
                Prediction.role == "champion",
                Prediction.task == STAY_TASK,
            )
            .order_by(Prediction.id.desc())
            .limit(1)
        ).first()
        latest = prediction_dict(row[0], row[1]) if row else None
    conditions = session.scalars(select(Condition).where(Condition.patient_id == patient.id)).all()
    studies = session.scalars(
        select(ImagingStudy).where(ImagingStudy.patient_id == patient.id)
    ).all()
    predictor = get_state().predictor
    readmission = discharge_risk(session, patient)
    audit_event(
        "patient.viewed",
        "R",
        patient_id=patient.public_id,
        resource="Patient",
        details={"identifiers": show_ids},
    )
    return jsonify(
        {
            "id": patient.public_id,
            "sex": patient.sex,
            "identifiers": decrypt_identifiers(get_state().cipher, patient) if show_ids else None,
            "encounter": None
            if encounter is None
            else {
                "id": encounter.public_id,
                "unit": encounter.unit,
                "kind": encounter.kind,
                "admitted_at": encounter.admitted_at.isoformat(),
                "discharged_at": encounter.discharged_at.isoformat()
                if encounter.discharged_at
                else None,
                "age_years": encounter.age_years,
                "height_cm": encounter.height_cm,
                "weight_kg": encounter.weight_kg,
                "outside_population": outside,
            },
            "risk": latest,
            "threshold": predictor.threshold if predictor else None,
            "readmission": readmission,
            "conditions": [
                {
                    "system": c.system,
                    "code": c.code,
                    "display": c.display,
                    "onset_at": c.onset_at.isoformat() if c.onset_at else None,
                    "onset_date": c.onset_on.isoformat() if c.onset_on else None,
                }
                for c in conditions
            ],
            "imaging_studies": [
                {
                    "study_uid": s.study_uid,
                    "modality": s.modality,
                    "body_part": s.body_part,
                    "started_at": s.started_at.isoformat() if s.started_at else None,
                    "started_date": s.started_on.isoformat() if s.started_on else None,
                    "description": s.description,
                    "series": s.series_count,
                    "instances": s.instance_count,
                }
                for s in studies
            ],
        }
    )


@patient_api.get("/patients/<patient_id>/predictions")
@requires(Permission.PATIENTS_READ)
@operation("Risk history", PredictionHistory, query=HistoryQuery, tags=("patients",))
def patient_predictions(patient_id: str) -> Response:
    """Risk history of the patient's stays (champion scores), oldest first."""
    query_args = parse_query(HistoryQuery)
    limit, since = query_args.limit, query_args.since
    session = db()
    patient = get_patient_or_raise(session, patient_id)
    query = (
        select(Prediction, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(
            Prediction.patient_id == patient.id,
            Prediction.role == "champion",
            Prediction.task == query_args.task,
        )
        .order_by(Prediction.as_of.desc(), Prediction.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(Prediction.as_of >= since)
    rows = list(reversed(session.execute(query).all()))
    audit_event(
        "prediction.history.viewed", "R", patient_id=patient.public_id, resource="RiskAssessment"
    )
    return jsonify({"items": [prediction_dict(p, v) for p, v in rows]})


@patient_api.get("/patients/<patient_id>/observations")
@requires(Permission.PATIENTS_READ)
@operation(
    "Observations, with quarantined values",
    ObservationList,
    query=ObservationsQuery,
    tags=("patients",),
)
def patient_observations(patient_id: str) -> Response:
    """Observations (``?code=`` LOINC or variable key, ``?since=``), with quarantined ones.

    Oldest first; beyond ``limit``, the newest ``limit`` observations (and quarantined
    items) are the ones listed."""
    query_args = parse_query(ObservationsQuery)
    limit, since, code = query_args.limit, query_args.since, query_args.code
    session = db()
    patient = get_patient_or_raise(session, patient_id)
    query = select(Observation).where(Observation.patient_id == patient.id)
    quarantined = select(QuarantineItem).where(QuarantineItem.patient_id == patient.id)
    if code:
        query = query.where(Observation.code == code)
        quarantined = quarantined.where(QuarantineItem.code == code)
    if since is not None:
        query = query.where(Observation.effective_at >= since)
        quarantined = quarantined.where(QuarantineItem.effective_at >= since)
    # The newest ``limit`` of each, listed oldest first: cut oldest-first, a long stay's
    # answer held its first days and silently left out the current values.
    rows = list(
        reversed(
            session.scalars(
                query.order_by(Observation.effective_at.desc(), Observation.id.desc()).limit(limit)
            ).all()
        )
    )
    rejected = list(
        reversed(session.scalars(quarantined.order_by(QuarantineItem.id.desc()).limit(limit)).all())
    )
    audit_event(
        "observation.viewed",
        "R",
        patient_id=patient.public_id,
        resource="Observation",
        details={"code": code},
    )
    return jsonify(
        {
            "items": [
                {
                    "code": o.code,
                    "key": BY_CODE[o.code].key if o.code in BY_CODE else None,
                    "label": BY_CODE[o.code].label if o.code in BY_CODE else o.code,
                    "value": o.value,
                    "value_text": o.value_text,
                    "unit": o.unit,
                    "effective_at": o.effective_at.isoformat(),
                    "source": o.source,
                }
                for o in rows
            ],
            "quarantined": [
                {
                    "code": q.code,
                    "effective_at": q.effective_at.isoformat() if q.effective_at else None,
                    "reason_code": q.reason_code,
                    "reason": q.reason,
                    "source": q.source,
                }
                for q in rejected
            ],
        }
    )
