"""The patient page and clinician feedback on the risk shown there.

The page is rendered on the server with everything that is text (demographics, current
risk, factors, conditions, imaging, feedback); the charts are drawn in the browser from
the patient JSON API, each with its numbers as a table for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Condition, ImagingStudy
from vitalcast.clinical.times import known_from
from vitalcast.db.base import utcnow
from vitalcast.errors import Conflict, InvalidInput
from vitalcast.features.labels import feature_label
from vitalcast.modeling.registry import risk_percent
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.modeling.tasks import STAY_TASK, early_in_stay
from vitalcast.security.permissions import Permission, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.patient_api import discharge_risk, get_patient_or_raise, latest_encounter
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.scoring import admission_descriptors, stay_outside_population
from vitalcast.serving.state import get_state
from vitalcast.web.charting import RISK_GAP_HOURS, chart_variables
from vitalcast.web.tables import FEEDBACK_KINDS, Feedback
from vitalcast.web.ward import missing_key_inputs, newest_vital_at

web_patient = Blueprint("web_patient", __name__)


@web_patient.app_template_filter("risk_pct")
def risk_pct(p: float, threshold: float | None = None) -> str:
    """A risk on every page (:func:`~vitalcast.modeling.registry.risk_percent`)."""
    return risk_percent(p, threshold)


@web_patient.app_template_filter("feature_label")
def feature_label_filter(name: str) -> str:
    """A model input in clinical words (``lactate_max_24h`` -> ``Lactate, highest (last 24 h)``)."""
    return feature_label(name)


@web_patient.app_template_filter("threshold_pct")
def threshold_pct(threshold: float) -> str:
    """An alert threshold: always one decimal, so a risk shown beside it is never
    ambiguous (see :func:`risk_pct`)."""
    return f"{threshold * 100:.1f} %"


MAX_REASON_CHARS = 500

CHART_VARIABLES = chart_variables()


@web_patient.get("/patients/<patient_id>")
@requires(Permission.PATIENTS_READ)
def patient(patient_id: str) -> str:
    """One patient: who, the current risk and why, its history, the data behind it."""
    session = db()
    who = current_principal()
    show_ids = role_allows(who.role, Permission.IDENTIFIERS_READ)
    record = get_patient_or_raise(session, patient_id)
    encounter = latest_encounter(session, record)
    current = None
    version = None
    outside = stay_outside_population(get_state().settings, encounter)
    if encounter is not None and outside is None:
        row = session.execute(
            select(Prediction, ModelVersion)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(
                Prediction.encounter_id == encounter.id,
                Prediction.role == "champion",
                Prediction.task == STAY_TASK,
            )
            .order_by(Prediction.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            current, version = row[0], row[1]
    feedback = (
        session.scalars(
            select(Feedback)
            .where(Feedback.encounter_id == encounter.id)
            .order_by(Feedback.created_at.desc())
            .limit(20)
        ).all()
        if encounter is not None
        else []
    )
    shown = _risks_shown(session, feedback)
    conditions = sorted(
        session.scalars(select(Condition).where(Condition.patient_id == record.id)),
        key=lambda c: _chronological(known_from(c.onset_at, c.onset_on)),
    )
    studies = sorted(
        session.scalars(select(ImagingStudy).where(ImagingStudy.patient_id == record.id)),
        key=lambda s: _chronological(known_from(s.started_at, s.started_on)),
    )
    state = get_state()
    readmission = discharge_risk(session, record)
    audit_event(
        "patient.viewed",
        "R",
        patient_id=record.public_id,
        resource="Patient",
        details={"identifiers": show_ids, "page": "patient"},
    )
    predictor = state.predictor
    same_model = (
        predictor is not None
        and current is not None
        and (predictor.model_version_id == current.model_version_id)
    )
    missing_key = (
        missing_key_inputs(
            current.missing_inputs or [],
            predictor.feature_names if same_model and predictor else None,
        )
        if current is not None
        else []
    )
    threshold = (
        version.threshold if version else (state.predictor.threshold if state.predictor else None)
    )
    now = utcnow()
    vital_at = None if encounter is None else newest_vital_at(session, encounter.public_id)
    stale_minutes = state.settings.stale_after_minutes
    # Overdue vital signs qualify a risk someone acts on now: after discharge none are
    # due, and the page shows the stay's last risk as such (not a stale current one).
    stale = (
        encounter is not None
        and encounter.discharged_at is None
        and (vital_at is None or now - vital_at > timedelta(minutes=stale_minutes))
    )
    landmarks: list[dict[str, Any]] = [
        {"at": f.created_at.isoformat(), "label": _feedback_label(f.kind)} for f in feedback
    ]
    height_cm, weight_kg = (
        admission_descriptors(session, encounter) if encounter is not None else (None, None)
    )
    return render_template(
        "web/patient.html",
        patient=record,
        height_cm=height_cm,
        weight_kg=weight_kg,
        identifiers=decrypt_identifiers(state.cipher, record) if show_ids else None,
        encounter=encounter,
        current=current,
        outside_population=outside,
        version=version,
        readmission=readmission,
        threshold=threshold,
        feedback=feedback,
        shown=shown,
        conditions=conditions,
        studies=studies,
        landmarks=landmarks,
        can_feedback=role_allows(who.role, Permission.FEEDBACK_WRITE),
        variables=CHART_VARIABLES,
        risk_gap_hours=RISK_GAP_HOURS,
        missing_key=missing_key,
        early=None
        if current is None or encounter is None
        else early_in_stay(current.task, encounter.admitted_at, current.as_of),
        now=now,
        vital_at=vital_at,
        stale=stale,
        stale_minutes=stale_minutes,
    )


def _risks_shown(session: Session, feedback: Sequence[Feedback]) -> dict[int, str]:
    """Each response's risk as the page showed it when it was given: the score with the
    threshold of the model that made it (:func:`risk_pct`).

    Why: a whole percent of the stored permille, rounded half-even, listed an
    acknowledged 30.4 % alert (threshold 30.0 %) as "risk shown 30 %", below the
    threshold it had crossed.
    """
    ids = [f.prediction_id for f in feedback if f.prediction_id is not None]
    if not ids:
        return {}
    rows = session.execute(
        select(Prediction.id, Prediction.score, ModelVersion.threshold)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.id.in_(ids))
    ).all()
    by_prediction = {pid: risk_pct(score, threshold) for pid, score, threshold in rows}
    return {
        f.id: by_prediction[f.prediction_id]
        for f in feedback
        if f.prediction_id is not None and f.prediction_id in by_prediction
    }


def _chronological(known: datetime | None) -> tuple[bool, datetime]:
    """Sort key: by when the onset or start is known (a day only once it is over), the
    undated last."""
    return (known is None, known or datetime.min)


def _feedback_label(kind: str) -> str:
    return {
        "acknowledge": "Alert acknowledged",
        "agree": "Agreed with the risk",
        "disagree": "Disagreed with the risk",
    }.get(kind, kind)


@web_patient.post("/patients/<patient_id>/feedback")
@requires(Permission.FEEDBACK_WRITE)
def feedback(patient_id: str) -> Response:
    """Store an acknowledgement or an agree/disagree verdict on the current risk, audited."""
    session = db()
    record = get_patient_or_raise(session, patient_id)
    encounter = latest_encounter(session, record)
    kind = request.form.get("kind", "")
    reason = request.form.get("reason", "").strip()
    problems = []
    if kind not in FEEDBACK_KINDS:
        problems.append({"loc": ["form", "kind"], "msg": f"one of {', '.join(FEEDBACK_KINDS)}"})
    if kind == "disagree" and not reason:
        problems.append({"loc": ["form", "reason"], "msg": "say why you disagree"})
    if len(reason) > MAX_REASON_CHARS:
        problems.append(
            {"loc": ["form", "reason"], "msg": f"at most {MAX_REASON_CHARS} characters"}
        )
    if problems:
        raise InvalidInput("the feedback form has problems", details=problems)
    if encounter is None or not encounter.in_progress:
        # An acknowledgement or a verdict answers a risk someone acts on; after discharge
        # there is none, and the stay's record is history.
        raise Conflict("this patient has no stay in progress; feedback is closed")
    sent_id = request.form.get("prediction_id")
    if not sent_id:
        # A verdict or an acknowledgement answers a risk that was shown: without one (a
        # stay not scored yet, or outside the model's population) there is nothing to
        # agree with, and a stored "agree" would count towards nothing.
        raise InvalidInput(
            "there is no risk to respond to; reload the page",
            details=[{"loc": ["form", "prediction_id"], "msg": "the risk answered is required"}],
        )
    prediction = session.scalar(select(Prediction).where(Prediction.public_id == sent_id))
    if prediction is None or prediction.patient_id != record.id:
        raise InvalidInput(
            "the score you answered is not this patient's; reload the page",
            details=[{"loc": ["form", "prediction_id"], "msg": "unknown for this patient"}],
        )
    if prediction.encounter_id != encounter.id:
        # A page of an earlier stay, still open after the patient was admitted again:
        # its score is no risk of the stay in progress, where the verdict would be filed.
        raise InvalidInput(
            "the score you answered is not this stay's; reload the page",
            details=[{"loc": ["form", "prediction_id"], "msg": "from another stay"}],
        )
    if kind == "acknowledge":
        threshold = session.scalar(
            select(ModelVersion.threshold).where(ModelVersion.id == prediction.model_version_id)
        )
        if threshold is None or prediction.score < threshold:
            # The page offers it for an alert only; a crafted one for a risk below the
            # threshold would count as a handled alert in the monitoring of responses.
            raise InvalidInput(
                "only an alert (a risk at or above the threshold) can be acknowledged",
                details=[{"loc": ["form", "kind"], "msg": "the risk answered is no alert"}],
            )
    who = current_principal()
    row = Feedback(
        patient_id=record.id,
        encounter_id=encounter.id,
        prediction_id=prediction.id,
        kind=kind,
        reason=reason or None,
        user_id=who.id if who.kind == "user" else None,
        actor=who.actor,
        score_shown_permille=round(prediction.score * 1000),
    )
    session.add(row)
    session.flush()
    # The reason is free text that may name people; it stays in the access-controlled
    # feedback table, and the audit trail records that feedback was given and of what kind.
    audit_event(
        "feedback.recorded",
        "C",
        patient_id=record.public_id,
        resource=f"Prediction/{sent_id}",
        details={"kind": kind, "feedback_id": row.id, "has_reason": bool(reason)},
    )
    flash(_feedback_label(kind) + " — recorded.")
    return redirect(url_for("web_patient.patient", patient_id=record.public_id))  # type: ignore[return-value]
