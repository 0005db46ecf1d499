"""REST API ``/api/v1``: predictions and patients."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from sqlalchemy import select

from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.db.base import utcnow
from vitalcast.errors import ModelUnavailable, NotFound
from vitalcast.modeling.tables import Prediction
from vitalcast.security.permissions import Permission, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db, request_id
from vitalcast.serving.fastpath import predict_one
from vitalcast.serving.patients import list_ward
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.realtime import sse_stream
from vitalcast.serving.scoring import record_prediction, score_encounter
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import int_arg, json_body, raise_if

api = Blueprint("api", __name__)


def _predictor() -> Predictor:
    predictor = get_state().predictor
    if predictor is None:
        raise ModelUnavailable(
            "no champion model is loaded; train one (`vitalcast train`) and promote it"
        )
    return predictor


def _prediction_body(predictor: Predictor, prediction: Prediction) -> dict[str, Any]:
    return {
        "id": prediction.public_id,
        "probability": round(prediction.score, 6),
        "band": prediction.band,
        "threshold": predictor.threshold,
        "model_version": predictor.version,
        "task": predictor.task,
        "as_of": prediction.as_of.isoformat(),
        "data_freshness_at": prediction.data_freshness_at.isoformat()
        if prediction.data_freshness_at
        else None,
        "factors": prediction.explanation or [],
        "missing": prediction.missing_inputs or [],
        "request_id": request_id(),
    }


@api.post("/predict")
@requires(Permission.PREDICT)
def predict() -> Response:
    """Score one patient: a flat object of features, or ``{"patient_id": ...}``."""
    body = json_body()  # a malformed body is the caller's problem whatever the model state
    predictor = _predictor()
    session = db()
    if isinstance(body, dict) and set(body) == {"patient_id"}:
        prediction = _predict_stored_patient(session, predictor, body["patient_id"])
    else:
        predict_one(predictor.scorer, body)  # validates: every bad field reported at once
        features = {name: body.get(name) for name in predictor.feature_names}
        prediction = record_prediction(
            session,
            predictor,
            features,
            role="adhoc",
            as_of=utcnow(),
            explain=request.args.get("explain") != "false",
        )
        audit_event("prediction.served", "E", resource=f"Prediction/{prediction.public_id}")
    return jsonify(_prediction_body(predictor, prediction))


def _predict_stored_patient(session: Any, predictor: Predictor, patient_id: Any) -> Prediction:
    if not isinstance(patient_id, str):
        raise_if([{"loc": ["body", "patient_id"], "msg": "must be a string"}])
    patient = session.scalar(select(Patient).where(Patient.public_id == patient_id))
    if patient is None:
        raise NotFound("no patient with that id")
    encounter = session.scalar(
        select(Encounter)
        .where(Encounter.patient_id == patient.id)
        .order_by(Encounter.admitted_at.desc())
        .limit(1)
    )
    if encounter is None:
        raise NotFound("the patient has no encounter to score")
    prediction = score_encounter(session, predictor, encounter, role="champion")
    audit_event(
        "prediction.served",
        "E",
        patient_id=patient.public_id,
        resource=f"Prediction/{prediction.public_id}",
    )
    return prediction


@api.get("/patients")
@requires(Permission.PATIENTS_READ)
def patients() -> Response:
    """In-progress stays sorted by current risk, paginated (``?limit=&offset=&unit=``)."""
    problems: list[dict[str, Any]] = []
    limit = int_arg("limit", 50, low=1, high=500, problems=problems)
    offset = int_arg("offset", 0, low=0, high=10_000_000, problems=problems)
    raise_if(problems, "invalid query parameters")
    who = current_principal()
    show_ids = role_allows(who.role, Permission.IDENTIFIERS_READ)
    rows, total = list_ward(
        db(),
        unit=request.args.get("unit") or None,
        limit=limit,
        offset=offset,
        cipher=get_state().cipher if show_ids else None,
    )
    audit_event(
        "patient.list",
        "R",
        resource="Patient",
        details={"patients": [r.patient_id for r in rows], "identifiers": show_ids},
    )
    return jsonify(
        {"items": [r.to_dict() for r in rows], "total": total, "limit": limit, "offset": offset}
    )


@api.get("/events")
@requires(Permission.PATIENTS_READ)
def events() -> Response:
    """Server-Sent Events: risk updates of the patients the caller may see."""
    state = get_state()
    if state.bus is None:
        raise ModelUnavailable("live updates are not available in this process")
    who = current_principal()
    units = set(who.units)
    audit_event("events.subscribe", "R", resource="RiskEvents", details={"units": sorted(units)})

    def allow(event: dict[str, Any]) -> bool:
        return not units or event.get("unit") in units

    stream = stream_with_context(sse_stream(state.bus, allow=allow))
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
