"""REST API ``/api/v1``: predictions and patients."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, make_response, request, stream_with_context
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.db.types import new_public_id
from vitalcast.errors import Busy, InvalidInput, ModelUnavailable, NotFound, PayloadTooLarge
from vitalcast.features.encounter import readmission_features
from vitalcast.features.stay import implausible
from vitalcast.modeling.landmark_calibration import TIME_FEATURE
from vitalcast.modeling.tables import Prediction, public_probability
from vitalcast.modeling.tasks import (
    STAY_TASK,
    TABULAR,
    TASKS,
    TaskError,
    early_at,
    early_in_stay,
    get_task,
)
from vitalcast.security.permissions import Permission, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db, request_id
from vitalcast.serving.encounter_scoring import (
    READMISSION_TASK,
    OutsideCohort,
    latest_discharge,
    score_readmission,
)
from vitalcast.serving.errors import render_error
from vitalcast.serving.fastpath import MAX_ABS_VALUE, feature_errors
from vitalcast.serving.guard import still_authorised
from vitalcast.serving.models import refresh_if_stale, scoring_models
from vitalcast.serving.openapi import operation
from vitalcast.serving.patient_api import get_patient_or_raise, latest_encounter
from vitalcast.serving.patients import list_ward
from vitalcast.serving.predictor import DEFAULT_TASK, Predictor
from vitalcast.serving.realtime import STREAM_RETRY_AFTER_S, sse_stream
from vitalcast.serving.schemas import (
    MAX_BATCH_ROWS,
    MAX_EXPLAINED_ROWS,
    BatchQuery,
    BatchRequest,
    BatchResult,
    PatientsQuery,
    PredictionResult,
    PredictPatient,
    PredictQuery,
    WardPage,
    parse_query,
)
from vitalcast.serving.scoring import (
    outside_sentence,
    record_prediction,
    score_encounter,
    served_population,
    stay_outside_population,
)
from vitalcast.serving.state import AppState, get_state
from vitalcast.serving.validation import json_body, raise_if

api = Blueprint("api", __name__)


def _predictor(task: str = DEFAULT_TASK) -> Predictor:
    """The champion that scores ``task``'s requests in this process (503 when none)."""
    state = get_state()
    predictor = state.predictor if task == DEFAULT_TASK else state.task_champions.get(task)
    if predictor is None:
        raise ModelUnavailable(
            f"no {task} champion model is loaded; train one (`vitalcast train --task {task}`)"
            " and promote it"
        )
    return predictor


def _known_task(name: str) -> bool:
    """A built-in task or ``tabular:NAME`` (whose champion may or may not be loaded: 503)."""
    try:
        get_task(name)
    except TaskError:
        return False
    return True


def _task_of(body: dict[str, Any], payload: str) -> tuple[str, Any]:
    """The task named by ``{"task": ..., <payload>: ...}`` and that payload; every shape
    problem at once (422). A flat body names no task: it is the stay task's."""
    problems = [
        {"loc": ["body", key], "msg": "unknown field"}
        for key in body
        if key not in {"task", payload}
    ]
    task = body["task"]
    if not isinstance(task, str) or not _known_task(task):
        problems.append(
            {
                "loc": ["body", "task"],
                "msg": f"unknown task; expected one of: {', '.join(TASKS)}, {TABULAR}:NAME",
            }
        )
    if payload not in body:
        problems.append({"loc": ["body", payload], "msg": "required"})
    raise_if(problems)
    return task, body[payload]


def _prediction_body(
    predictor: Predictor, prediction: Prediction, early: dict[str, float] | None
) -> dict[str, Any]:
    return {
        "id": prediction.public_id,
        "probability": public_probability(prediction.score),
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
        "early": early,
        "request_id": request_id(),
    }


@api.post("/predict")
@requires(Permission.PREDICT)
@operation(
    "Score one feature vector or one stored patient",
    PredictionResult,
    query=PredictQuery,
    body={
        "oneOf": [
            {"$ref": "#/components/schemas/PredictPatient"},
            {"$ref": "#/components/schemas/Features"},
            {"$ref": "#/components/schemas/TaskFeatures"},
        ]
    },
    needs_model=True,
    errors=(404,),
    tags=("predictions",),
    models=(PredictPatient,),
)
def predict() -> Response:
    """Score one patient: a flat object of features, ``{"patient_id": ...}``, or
    ``{"task": ..., "features": {...}}``.

    A feature vector is validated against the champion's features (every unknown name,
    non-number or unknown category reported at once; an age below the model's
    population, 422 as for a stored patient) and stored as an ad hoc prediction;
    a patient id scores the patient's latest stay from the stored observations. A flat
    object or a patient id is scored by the `icu-mortality` champion; `task` names
    another task's champion (`readmission-30d`, `tabular`), whose features
    `GET /api/v1/models/{version}` lists.
    """
    body = json_body()  # a malformed body is the caller's problem whatever the model state
    explain = parse_query(PredictQuery).explain
    task, where = DEFAULT_TASK, ["body"]
    by_patient = isinstance(body, dict) and set(body) == {"patient_id"}
    if isinstance(body, dict) and "task" in body:
        by_patient = "patient_id" in body
        task, payload = _task_of(body, "patient_id" if by_patient else "features")
        if by_patient and task != DEFAULT_TASK:
            prediction, predictor = _predict_discharge(db(), task, payload)
            return jsonify(_prediction_body(predictor, prediction, None))
        body = {"patient_id": payload} if by_patient else payload
        where = ["body"] if by_patient else ["body", "features"]
    predictor = _predictor(task)
    session = db()
    if by_patient:
        prediction, admitted_at, predictor = _predict_stored_patient(
            session, get_state(), body["patient_id"]
        )
        early = early_in_stay(predictor.task, admitted_at, prediction.as_of)
    else:
        _validate_features(predictor, body, where)  # every bad field reported at once
        features = {name: body.get(name) for name in predictor.feature_names}
        prediction = record_prediction(
            session,
            predictor,
            features,
            role="adhoc",
            as_of=utcnow(),
            explain=explain,
        )
        audit_event("prediction.served", "E", resource=f"Prediction/{prediction.public_id}")
        hours = features.get(TIME_FEATURE)
        early = early_at(predictor.task, None if hours is None else float(hours))
    return jsonify(_prediction_body(predictor, prediction, early))


@api.post("/predict/batch")
@requires(Permission.PREDICT)
@operation(
    f"Score up to {MAX_BATCH_ROWS} feature vectors at once",
    BatchResult,
    query=BatchQuery,
    body={
        "oneOf": [
            {"$ref": "#/components/schemas/BatchRequest"},
            {"$ref": "#/components/schemas/TaskBatch"},
        ]
    },
    needs_model=True,
    tags=("predictions",),
    models=(BatchRequest,),
)
def predict_batch() -> Response:
    """Score many flat feature objects in one vectorised call of the compiled scorer.

    Every row is validated as ``POST /predict`` validates one, and all problems of all
    rows come back at once, located as ``["body", "rows", <index>, <feature>]``; nothing
    is scored unless every row is valid. Batches are audited as one event (row count,
    model version, a digest of the inputs) and not stored row by row: they are for
    cohort scoring and integration back-fills, not for the patient chart. Rows are the
    `icu-mortality` champion's features; ``{"task": ..., "rows": [...]}`` scores another
    task's rows with its champion.
    """
    body = json_body()
    query = parse_query(BatchQuery)
    task = DEFAULT_TASK
    if isinstance(body, dict) and "task" in body:
        task, rows = _task_of(body, "rows")
        body = {"rows": rows}
    rows = _batch_rows(body)
    if query.explain and len(rows) > MAX_EXPLAINED_ROWS:
        raise_if(
            [
                {
                    "loc": ["query", "explain"],
                    "msg": f"at most {MAX_EXPLAINED_ROWS} rows with factors",
                }
            ]
        )
    predictor = _predictor(task)
    scorer = predictor.scorer
    matrix = np.full((len(rows), scorer.n_features), np.nan)
    problems: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append({"loc": ["body", "rows", i], "msg": "expected an object"})
            continue
        row_problems = feature_errors(scorer, row, matrix[i])
        for problem in row_problems:
            problems.append(
                {"loc": ["body", "rows", i, *problem["loc"][1:]], "msg": problem["msg"]}
            )
        timing = time_problems(predictor.task, row, ["body", "rows", i])
        timing += plausibility_problems(predictor.task, row, ["body", "rows", i])
        problems.extend(timing)
        if not row_problems and not timing:
            problems.extend(population_problems(predictor.task, row, ["body", "rows", i]))
    raise_if(problems, f"{len(problems)} problem(s) in the batch; nothing was scored")
    probabilities = scorer.score_batch(matrix)
    names = predictor.feature_names
    items = []
    for i, row in enumerate(rows):
        p = float(probabilities[i])
        factors = None
        if query.explain:
            factors = predictor.score(row, explain=True).factors
        items.append(
            {
                "index": i,
                "probability": round(p, 6),
                "band": predictor.model.band(p),
                "missing": [n for n in names if row.get(n) is None],
                "factors": factors,
            }
        )
    batch_id = new_public_id()
    audit_event(
        "prediction.batch.served",
        "E",
        resource=f"PredictionBatch/{batch_id}",
        details={
            "rows": len(rows),
            "model_version": predictor.version,
            "inputs_sha256": hashlib.sha256(request.get_data(cache=True)).hexdigest(),
        },
    )
    return jsonify(
        {
            "batch_id": batch_id,
            "model_version": predictor.version,
            "task": predictor.task,
            "threshold": predictor.threshold,
            "count": len(items),
            "items": items,
            "request_id": request_id(),
        }
    )


def _validate_features(predictor: Predictor, payload: Any, where: list[str]) -> None:
    """Every problem of one feature object, located under ``where`` (422)."""
    if not isinstance(payload, dict):
        raise_if([{"loc": where, "msg": "expected an object of feature names to values"}])
    x = np.full(predictor.scorer.n_features, np.nan)
    problems = feature_errors(predictor.scorer, payload, x)
    for problem in problems:
        problem["loc"] = [*where, *problem["loc"][1:]]
    problems += time_problems(predictor.task, payload, where)
    problems += plausibility_problems(predictor.task, payload, where)
    raise_if(problems, f"{len(problems)} invalid feature(s); see details")
    outside = population_problems(predictor.task, payload, where)
    raise_if(outside, outside[0]["msg"] if outside else "")


def time_problems(task: str, row: dict[str, Any], where: list[Any]) -> list[dict[str, Any]]:
    """The problem of a negative ``hours_since_admission`` for a task scored during a stay
    (one with landmarks): a risk "scored before the stay began" is no risk of a stay.
    Scored, it came back with ``early`` null, shown with the authority of a risk past the
    first landmark. None when the vector leaves it out or it is not a number
    (feature_errors' 422)."""
    if not timed_task(task):
        return []
    hours = row.get(TIME_FEATURE)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours >= 0:
        return []
    return [{"loc": [*where, TIME_FEATURE], "msg": "must be 0 or more (hours since admission)"}]


def plausibility_problems(task: str, row: dict[str, Any], where: list[Any]) -> list[dict[str, Any]]:
    """The stay task's features no stay can have (:func:`~vitalcast.features.stay.
    implausible`): a value outside its variable's plausible range, as ingestion
    quarantines an observation, or a negative count. Why: ``{"temp_last_all": 98.6}``
    (°F) or ``{"fio2_last_all": 0.4}`` (a fraction) was scored as 98.6 °C and 0.4 %,
    with no word. Values that are not numbers are feature_errors' 422."""
    if task != STAY_TASK:
        return []
    problems = []
    for name, value in row.items():
        # Not a number, or beyond ±1e9 (an int of any length compares exactly; NaN fails
        # too): feature_errors' 422 already.
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not abs(value) <= MAX_ABS_VALUE:
            continue
        why = implausible(name, float(value))
        if why is not None:
            problems.append({"loc": [*where, name], "msg": why})
    return problems


def timed_task(task: str) -> bool:
    """Whether ``task`` scores a stay at an hour of it (``hours_since_admission``)."""
    spec = TASKS.get(task)
    return spec is not None and bool(spec.all_landmarks_h)


def population_problems(task: str, row: dict[str, Any], where: list[Any]) -> list[dict[str, Any]]:
    """The problem of a feature vector outside the population ``task``'s model may score,
    located at its age feature (none when inside, or when the age is not given).

    Why: a stored child's stay is never scored by the adult ICU model; a vector naming
    the same child's age must not be either, or the API would give the risk the ward
    withholds. A vector has no encounter kind or unit, so only the age is checked.
    """
    spec = TASKS.get(task)
    population = spec.population if spec is not None else None
    if population is None or population.age_feature is None:
        return []
    age = row.get(population.age_feature)
    if isinstance(age, bool) or not isinstance(age, int | float):
        age = None  # a wrong type is feature_errors' 422, checked first
    reason = population.age_exclusion(age)
    if reason is None:
        return []
    return [{"loc": [*where, population.age_feature], "msg": outside_sentence(population, reason)}]


def _batch_rows(body: Any) -> list[Any]:
    """The ``rows`` list of a batch body, or every problem with its shape (422/413)."""
    if not isinstance(body, dict):
        raise_if([{"loc": ["body"], "msg": 'expected an object {"rows": [...]}'}])
    problems = [{"loc": ["body", key], "msg": "unknown field"} for key in body if key != "rows"]
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        problems.append({"loc": ["body", "rows"], "msg": "expected a non-empty list of objects"})
    raise_if(problems)
    assert isinstance(rows, list)
    if len(rows) > MAX_BATCH_ROWS:
        raise PayloadTooLarge(
            f"{len(rows)} rows; at most {MAX_BATCH_ROWS} per batch, split the request",
            details=[{"loc": ["body", "rows"], "msg": f"at most {MAX_BATCH_ROWS} rows"}],
        )
    return rows


def _predict_stored_patient(
    session: Session, state: AppState, patient_id: Any
) -> tuple[Prediction, datetime, Predictor]:
    """The stored patient's latest stay scored now, that stay's admission time, and the
    champion that scored it.

    The patient is looked up as the patient routes do (:func:`get_patient_or_raise`), so
    a caller bound to units cannot score, and store a prediction for, a patient outside
    them: the answer is the 404 an unknown id gets. A latest encounter outside the stay
    model's population (an outpatient visit, a child), or one that has ended, is a 422
    that says so. The prediction becomes the stay's current risk, so it is scored by the
    registry's champion as this transaction sees it (:func:`scoring_models`), not by one
    the watcher has not replaced yet.
    """
    if not isinstance(patient_id, str) or "\x00" in patient_id:
        raise_if([{"loc": ["body", "patient_id"], "msg": "must be a string"}])
    refresh_if_stale(session, state)  # a reload before the lock, not under it
    patient = get_patient_or_raise(session, patient_id)
    encounter = latest_encounter(session, patient)
    if encounter is None:
        raise NotFound("the patient has no encounter to score")
    outside = stay_outside_population(state.settings, encounter)
    if outside is not None:
        raise InvalidInput(
            "invalid request",
            details=[{"loc": ["body", "patient_id"], "msg": f"the latest encounter: {outside}"}],
        )
    if encounter.discharged_at is not None:
        # Scored "now", an ended stay's features would count the weeks since discharge
        # as hours of the stay, and the stored risk would become its current one.
        raise InvalidInput(
            "invalid request",
            details=[
                {
                    "loc": ["body", "patient_id"],
                    "msg": "the patient's latest stay has ended: a risk of in-hospital death"
                    " is computed during a stay; the risks computed during it are in the"
                    " patient's prediction history",
                }
            ],
        )
    predictor, _ = scoring_models(session, state)
    if predictor is None:
        raise ModelUnavailable("no champion model is loaded")
    prediction = score_encounter(session, predictor, encounter, role="champion")
    audit_event(
        "prediction.served",
        "E",
        patient_id=patient.public_id,
        resource=f"Prediction/{prediction.public_id}",
    )
    return prediction, encounter.admitted_at, predictor


def _predict_discharge(
    session: Session, task: str, patient_id: Any
) -> tuple[Prediction, Predictor]:
    """The stored patient's latest discharge scored by ``task``'s champion (readmission),
    and that champion; looked up as the patient routes do (a unit-bound caller gets a 404
    for a patient outside its units)."""
    if task != READMISSION_TASK:
        raise_if([{"loc": ["body", "patient_id"], "msg": f"{task} scores feature vectors only"}])
    if not isinstance(patient_id, str) or "\x00" in patient_id:
        raise_if([{"loc": ["body", "patient_id"], "msg": "must be a string"}])
    predictor = _predictor(task)
    patient = get_patient_or_raise(session, patient_id)
    try:
        encounter, current = latest_discharge(session, patient.id)
    except OutsideCohort as exc:
        raise InvalidInput(
            "invalid request", details=[{"loc": ["body", "patient_id"], "msg": str(exc)}]
        ) from None
    prediction = score_readmission(session, predictor, encounter, readmission_features(current))
    audit_event(
        "prediction.served",
        "E",
        patient_id=patient.public_id,
        resource=f"Prediction/{prediction.public_id}",
    )
    return prediction, predictor


@api.get("/patients")
@requires(Permission.PATIENTS_READ)
@operation("Ward list by current risk", WardPage, query=PatientsQuery, tags=("patients",))
def patients() -> Response:
    """In-progress stays sorted by current risk, paginated (``?limit=&offset=&unit=``).

    A caller bound to units sees only those units' stays; ``?unit=`` narrows within them
    (another unit matches nothing rather than answering 403, which would confirm it has
    patients).
    """
    query = parse_query(PatientsQuery)
    limit, offset = query.limit, query.offset
    who = current_principal()
    show_ids = role_allows(who.role, Permission.IDENTIFIERS_READ)
    rows, total = list_ward(
        db(),
        population=served_population(get_state().settings),
        unit=query.unit or None,
        limit=limit,
        offset=offset,
        cipher=get_state().cipher if show_ids else None,
        units=who.units,
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
@operation(
    "Server-Sent Events stream of risk updates",
    {
        "type": "string",
        "description": "`event: risk` lines with a JSON `data:` payload; a last"
        " `event: signed-out` when the caller's session or API key stops being valid",
    },
    media_type="text/event-stream",
    errors=(503,),
    tags=("realtime",),
)
def events() -> Response:
    """Server-Sent Events: risk updates of the patients the caller may see.

    The caller's session or API key is re-checked while the stream is open (see
    :func:`sse_stream`): signing out, being disabled or a revoked key end it.
    """
    state = get_state()
    if state.bus is None:
        raise ModelUnavailable("live updates are not available in this process")
    who = current_principal()
    units = set(who.units)
    if not state.bus.open_stream():
        # Every stream slot of this process is taken: refusing keeps a request thread free
        # for everything else; the pages ask again with their own back-off (vitalcast.js),
        # since EventSource cannot read Retry-After.
        response = make_response(
            render_error(Busy("all live-update streams of this server process are in use"))
        )
        response.headers["Retry-After"] = str(STREAM_RETRY_AFTER_S)
        return response
    try:
        audit_event(
            "events.subscribe", "R", resource="RiskEvents", details={"units": sorted(units)}
        )

        def allow(event: dict[str, Any]) -> bool:
            return not units or event.get("unit") in units

        response = Response(
            stream_with_context(
                sse_stream(state.bus, allow=allow, still_valid=still_authorised(who))
            ),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    except BaseException:
        state.bus.close_stream()  # no response will carry the slot back
        raise
    # The WSGI server closes the response when the stream ends or the browser goes away,
    # even if the stream never started (a generator's own finally would not run then).
    response.call_on_close(state.bus.close_stream)
    return response
