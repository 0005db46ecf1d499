"""Read-only FHIR R4 endpoints over the canonical store (``/fhir``).

EHRs and SMART apps read vitalcast's results in their own language: Patient, Encounter
(read, and search by patient, status and date), Observation (read, and search by patient,
code and date, sorted by date either way; stored observations and each stay's height and
weight, :mod:`vitalcast.serving.fhir_observations`) and RiskAssessment built from stored
predictions (``prediction.probabilityDecimal``, ``occurrenceDateTime``; read, and search by
patient and date). Searches count every match and page (:mod:`vitalcast.serving.fhir_search`).
Resources are built and validated with ``fhir.resources`` (its R4B models, whose shape
equals R4 for these resources). Every read is audited like any other patient-data read.
Errors are answered as OperationOutcome resources (:mod:`vitalcast.serving.fhir_outcome`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.riskassessment import RiskAssessment
from flask import Blueprint, Response, request, url_for
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, false, func, or_, select

from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.errors import InvalidInput, NotFound
from vitalcast.ingest.sources.fhir_map import ENCOUNTER_STATUSES
from vitalcast.modeling.tables import ModelVersion, Prediction, public_probability
from vitalcast.security.permissions import Permission, public, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.fhir_observations import (
    STORED,
    derived_id,
    parse_observation_id,
    served_observations,
)
from vitalcast.serving.fhir_outcome import FHIR_JSON
from vitalcast.serving.fhir_search import (
    check_search_params,
    code_filter,
    code_system,
    count_matches,
    date_filter,
    paging,
    searchset,
)
from vitalcast.serving.patient_api import check_patient_visible, get_patient_or_raise
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import raise_if

fhir = Blueprint("fhir", __name__)

_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")

UCUM = "http://unitsofmeasure.org"
_OUTCOMES = {"icu-mortality": "In-hospital death", "readmission-30d": "Readmission within 30 days"}
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# The store's encounter kinds as Encounter.class (v3 ActCode), the inverse of the choice
# the FHIR ingestion adapter makes (ACUTE and IMP both read back as inpatient stays).
_ENCOUNTER_CLASS = {"icu": "ACUTE", "inpatient": "IMP", "emergency": "EMER", "outpatient": "AMB"}


# Each search's own parameters (with their FHIR types), as the CapabilityStatement declares
# them and as the searches accept them; ``subject`` is ``patient``'s other name.
_BY_PATIENT = (("patient", "reference"), ("subject", "reference"))
OBSERVATION_SEARCH = (*_BY_PATIENT, ("code", "token"), ("date", "date"))
ENCOUNTER_SEARCH = (*_BY_PATIENT, ("status", "token"), ("date", "date"))
RISK_SEARCH = (*_BY_PATIENT, ("date", "date"))
OBSERVATION_PARAMS = frozenset({"_sort"} | {n for n, _ in OBSERVATION_SEARCH})
ENCOUNTER_PARAMS = frozenset(n for n, _ in ENCOUNTER_SEARCH)
RISK_PARAMS = frozenset(n for n, _ in RISK_SEARCH)


def _respond(resource: Any, status: int = 200) -> Response:
    body = resource.model_dump_json(exclude_none=True, by_alias=True)
    return Response(body, status=status, mimetype=FHIR_JSON)


def _patient_resource(patient: Patient, with_ids: bool) -> FhirPatient:
    data: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.public_id,
        "gender": patient.sex if patient.sex in ("male", "female", "other", "unknown") else None,
    }
    if with_ids:
        ids = decrypt_identifiers(get_state().cipher, patient)
        if ids.get("mrn"):
            data["identifier"] = [{"type": {"text": "MRN"}, "value": ids["mrn"]}]
        if ids.get("name"):
            data["name"] = [{"text": ids["name"]}]
        if ids.get("birth_date"):
            data["birthDate"] = ids["birth_date"]
    return FhirPatient.model_validate(data)


_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# The store's variable kinds with an R4 Observation category: vital signs (height and
# weight among them, as the R4 vital-signs profile has them) and laboratory results.
_CATEGORY = {"vital": "vital-signs", "descriptor": "vital-signs", "lab": "laboratory"}


def _observation_resource(
    row: Any, patient_id: str, encounter_id: str | None, status: str
) -> FhirObservation:
    """An Observation from a row of :func:`served_observations` (stored or derived)."""
    spec = BY_CODE.get(row.code)
    coding = {"system": code_system(row.code), "code": row.code}
    if spec:
        coding["display"] = spec.label
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(row.row_id) if row.kind == STORED else derived_id(row.kind, encounter_id or ""),
        "status": status,
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": row.effective_at.isoformat(),
    }
    if spec and spec.kind in _CATEGORY:
        category = {"system": _OBS_CATEGORY, "code": _CATEGORY[spec.kind]}
        data["category"] = [{"coding": [category]}]
    if encounter_id is not None:
        data["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    if row.value is not None:
        data["valueQuantity"] = {
            "value": row.value,
            "unit": row.unit,
            "system": UCUM,
            "code": row.unit,
        }
    elif row.value_text is not None:
        data["valueString"] = row.value_text
    return FhirObservation.model_validate(data)


def _observation_resources(rows: Sequence[Any], patient_id: str) -> list[FhirObservation]:
    """The rows' Observations, with their encounters' public ids and withdrawals looked up
    at once."""
    wanted = {r.encounter_id for r in rows} - {None}
    found = select(
        Encounter.id, Encounter.public_id, Encounter.withdrawn_at, Encounter.withdrawn_reason
    ).where(Encounter.id.in_(wanted))
    stays = {stay.id: stay for stay in db().execute(found)} if wanted else {}
    resources = []
    for r in rows:
        stay = stays.get(r.encounter_id)
        public = r.encounter_public_id or (stay.public_id if stay else None)
        status = _record_status(stay.withdrawn_at, stay.withdrawn_reason) if stay else "final"
        resources.append(_observation_resource(r, patient_id, public, status))
    return resources


def _withdrawn_status(reason: str | None) -> str:
    """The R4 status a withdrawn stay's source gave: ``entered-in-error`` or ``cancelled``."""
    return (reason or "entered_in_error").replace("_", "-")


def _record_status(withdrawn_at: datetime | None, reason: str | None) -> str:
    """The status of an Observation or RiskAssessment of a stay.

    ``entered-in-error`` when the stay's source withdrew it as entered in error: in R4
    that says the record should never have existed (a registration under the wrong
    patient, a duplicate), and what was measured or scored within it inherits that, so an
    EHR reading these resources does not take them as a patient's final results. A
    cancelled stay's readings were still taken, so they stay ``final``; their
    ``encounter`` reference leads to the cancelled stay.
    """
    if withdrawn_at is not None and _withdrawn_status(reason) == "entered-in-error":
        return "entered-in-error"
    return "final"


def _status(enc: Encounter) -> str:
    """The FHIR status of a stored stay: a withdrawn one says what its source said."""
    if enc.withdrawn_at is not None:
        return _withdrawn_status(enc.withdrawn_reason)
    return "finished" if enc.discharged_at is not None else "in-progress"


def _encounter_resource(enc: Encounter, patient_id: str) -> FhirEncounter:
    period = {"start": enc.admitted_at.isoformat()}
    if enc.discharged_at is not None:
        period["end"] = enc.discharged_at.isoformat()
    data: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": enc.public_id,
        "status": _status(enc),
        "class": {"system": ACT_CODE, "code": _ENCOUNTER_CLASS.get(enc.kind, "IMP")},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": period,
    }
    if enc.unit:
        data["location"] = [{"location": {"display": enc.unit}}]
    return FhirEncounter.model_validate(data)


def _risk_resource(row: Any, patient_id: str) -> RiskAssessment:
    """A RiskAssessment from a row of :func:`_risk_query`."""
    pred: Prediction = row.Prediction
    data: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": pred.public_id,
        "status": _record_status(row.withdrawn_at, row.withdrawn_reason),
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": pred.as_of.isoformat(),
        "method": {"text": f"vitalcast {pred.task} model {row.version}"},
        "prediction": [
            {
                "outcome": {"text": _OUTCOMES.get(pred.task, pred.task)},
                "probabilityDecimal": public_probability(pred.score),
                "qualitativeRisk": {"text": pred.band},
            }
        ],
        "note": [{"text": "Decision support; complements clinical judgement."}],
    }
    if row.encounter_public_id is not None:
        data["encounter"] = {"reference": f"Encounter/{row.encounter_public_id}"}
    return RiskAssessment.model_validate(data)


def _date_filters(
    query: _Q,
    start: SQLColumnExpression[datetime],
    end: SQLColumnExpression[datetime | None] | None = None,
) -> _Q:
    """The request's FHIR ``date`` parameters (repeatable, AND) on a time or a period.

    See :func:`vitalcast.serving.fhir_search.date_filter` for the precisions and prefixes.
    """
    values = request.args.getlist("date")
    return query.where(date_filter(values, start, end)) if values else query


def _patient_param() -> str:
    name = "patient" if request.args.get("patient") else "subject"
    raw = request.args.get(name) or ""
    kind, _, patient_id = raw.rpartition("/")
    if kind not in ("", "Patient"):
        # subject=Device/x (or Group/1, an absolute URL) names no patient of this server:
        # a malformed search (422), not an unknown patient (404).
        raise InvalidInput(
            f"{name} must be a patient id or Patient/<id>",
            details=[{"loc": ["query", name], "msg": "not a Patient reference"}],
        )
    if not patient_id:
        raise InvalidInput(
            "a patient is required", details=[{"loc": ["query", "patient"], "msg": "required"}]
        )
    return patient_id


_SEARCH_NOTE = (
    "Searches need a patient (or subject) and answer every match a page at a time: total"
    " counts the matches, and the next link (_count, _offset) leads on. Observation sorts"
    " by _sort=date or -date; code takes system|code tokens, comma-separated for OR."
    " date (Observation.effective, Encounter.period, RiskAssessment.occurrence) takes"
    " eq, ge, gt, le or lt and any precision: a year, month, day, minute, second or"
    " fraction of one is the range it covers; a value without a time zone is in UTC."
    " Any other parameter is refused (422, an OperationOutcome naming it in expression)."
    " Observations include each stay's height (8302-2) and weight (29463-7), kept on the"
    " encounter with no time of measurement: their effective time is the admission."
)


def _searchable(kind: str, params: tuple[tuple[str, str], ...], *, read: bool) -> dict[str, Any]:
    """A CapabilityStatement resource entry, from the parameters the search accepts."""
    interactions = [{"code": "read"}] if read else []
    return {
        "type": kind,
        "interaction": [*interactions, {"code": "search-type"}],
        "searchParam": [{"name": n, "type": t} for n, t in params],
        "documentation": _SEARCH_NOTE,
    }


@fhir.get("/metadata")
@public
def metadata() -> Response:
    """CapabilityStatement: what this read-only server offers."""
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementation": {
            "description": "vitalcast read-only FHIR endpoint",
            "url": url_for("fhir.metadata", _external=True).removesuffix("/metadata"),
        },
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "Patient", "interaction": [{"code": "read"}]},
                    _searchable("Encounter", ENCOUNTER_SEARCH, read=True),
                    _searchable("Observation", OBSERVATION_SEARCH, read=True),
                    _searchable("RiskAssessment", RISK_SEARCH, read=True),
                ],
            }
        ],
    }
    return Response(json.dumps(body), mimetype=FHIR_JSON)


@fhir.get("/Patient/<patient_id>")
@requires(Permission.PATIENTS_READ)
def read_patient(patient_id: str) -> Response:
    patient = get_patient_or_raise(db(), patient_id)
    with_ids = role_allows(current_principal().role, Permission.IDENTIFIERS_READ)
    audit_event("patient.viewed", "R", patient_id=patient.public_id, resource="fhir/Patient")
    return _respond(_patient_resource(patient, with_ids))


@fhir.get("/Observation")
@requires(Permission.PATIENTS_READ)
def search_observations() -> Response:
    """A patient's observations by ``code`` (tokens, comma for OR) and ``date``, a page at
    a time (``_count`` up to 10,000, default 1,000; ``_offset``), sorted by date.

    The stays' heights and weights are among them (:mod:`vitalcast.serving.fhir_observations`),
    filtered, counted and paged in the same query as the stored observations."""
    check_search_params(OBSERVATION_PARAMS)
    count, offset = paging(1000, 10000)
    sort = request.args.get("_sort", "date")
    if sort not in ("date", "-date"):
        raise InvalidInput(
            "invalid FHIR search parameters",
            details=[{"loc": ["query", "_sort"], "msg": "date or -date"}],
        )
    patient = get_patient_or_raise(db(), _patient_param())
    served = served_observations(
        Observation.patient_id == patient.id, Encounter.patient_id == patient.id
    )
    query = select(served)
    codes = request.args.getlist("code")
    if codes:
        query = query.where(code_filter(codes, served.c.code))
    query = _date_filters(query, served.c.effective_at)
    keys = (served.c.effective_at, served.c.kind, served.c.row_id)
    order = tuple(k.desc() for k in keys) if sort == "-date" else keys
    rows = db().execute(query.order_by(*order).offset(offset).limit(count)).all()
    total = count_matches(db(), query)
    audit_event(
        "observation.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/Observation",
        details={"count": len(rows)},
    )
    resources = _observation_resources(rows, patient.public_id)
    return searchset("Observation", resources, total=total, count=count, offset=offset)


@fhir.get("/Observation/<observation_id>")
@requires(Permission.PATIENTS_READ)
def read_observation(observation_id: str) -> Response:
    """One Observation by the id a search gave it: stored, or a stay's height or weight."""
    refusal = NotFound("no Observation with that id")
    wanted = parse_observation_id(observation_id)
    if wanted is None:
        raise refusal
    if wanted.kind == STORED:
        served = served_observations(Observation.id == wanted.row_id, false())
    else:
        served = served_observations(false(), Encounter.public_id == wanted.encounter)
    row = db().execute(select(served).where(served.c.kind == wanted.kind)).first()
    patient = None if row is None else db().get(Patient, row.patient_id)
    if row is None or patient is None:
        raise refusal
    check_patient_visible(db(), patient, refusal=refusal)
    audit_event(
        "observation.viewed",
        "R",
        patient_id=patient.public_id,
        resource=f"fhir/Observation/{observation_id}",
    )
    return _respond(_observation_resources([row], patient.public_id)[0])


@fhir.get("/Encounter/<encounter_id>")
@requires(Permission.PATIENTS_READ)
def read_encounter(encounter_id: str) -> Response:
    enc = db().scalar(select(Encounter).where(Encounter.public_id == encounter_id))
    if enc is None:
        raise NotFound("no Encounter with that id")
    patient = db().get(Patient, enc.patient_id)
    assert patient is not None
    check_patient_visible(db(), patient, refusal=NotFound("no Encounter with that id"))
    audit_event(
        "encounter.viewed",
        "R",
        patient_id=patient.public_id,
        resource=f"fhir/Encounter/{encounter_id}",
    )
    return _respond(_encounter_resource(enc, patient.public_id))


def _status_param() -> set[str] | None:
    """The ``status`` search values, each an R4 EncounterStatus code (else a 400)."""
    given = request.args.get("status")
    if given is None:
        return None
    values = set(given.split(","))
    if not values <= ENCOUNTER_STATUSES:
        raise_if(
            [
                {
                    "loc": ["query", "status"],
                    "msg": "R4 Encounter status codes, comma-separated: "
                    + ", ".join(sorted(ENCOUNTER_STATUSES)),
                }
            ],
            "invalid FHIR search parameters",
        )
    return values


def _status_conditions(wanted: set[str]) -> list[ColumnElement[bool]]:
    """SQL conditions for the stored stays :func:`_status` renders with a wanted status."""
    conditions: list[ColumnElement[bool]] = []
    if "in-progress" in wanted:
        conditions.append(and_(Encounter.in_progress))
    if "finished" in wanted:
        # A withdrawn stay is rendered entered-in-error or cancelled, discharged or not.
        conditions.append(
            and_(Encounter.discharged_at.is_not(None), Encounter.withdrawn_at.is_(None))
        )
    withdrawn = sorted(s.replace("-", "_") for s in wanted & {"entered-in-error", "cancelled"})
    if withdrawn:
        conditions.append(
            and_(
                Encounter.withdrawn_at.is_not(None),
                func.coalesce(Encounter.withdrawn_reason, "entered_in_error").in_(withdrawn),
            )
        )
    return conditions


@fhir.get("/Encounter")
@requires(Permission.PATIENTS_READ)
def search_encounters() -> Response:
    """A patient's encounters, latest admission first; ``status`` is one R4 status or a
    comma-separated list of them (any matches, as FHIR token search reads a list);
    ``date`` searches the period, admission to discharge (open while the stay is in
    progress).

    Why lists: a CDS Hooks client asks for every status that means a stay is going on
    (``arrived,in-progress,onleave,triaged``) in one search, and this server is such a
    client's FHIR server in the tests and the demo. Stored stays are rendered
    ``in-progress``, ``finished`` or the withdrawn source's ``entered-in-error`` /
    ``cancelled`` (:func:`_status`), so the other statuses match none.
    """
    check_search_params(ENCOUNTER_PARAMS)
    count, offset = paging(100, 1000)
    wanted = _status_param()
    patient = get_patient_or_raise(db(), _patient_param())
    query = select(Encounter).where(Encounter.patient_id == patient.id)
    if wanted is not None:
        query = query.where(or_(false(), *_status_conditions(wanted)))
    query = _date_filters(query, Encounter.admitted_at, Encounter.discharged_at)
    order = (Encounter.admitted_at.desc(), Encounter.id.desc())
    rows = db().scalars(query.order_by(*order).offset(offset).limit(count)).all()
    total = count_matches(db(), query)
    audit_event(
        "encounter.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/Encounter",
        details={"count": len(rows)},
    )
    resources = [_encounter_resource(e, patient.public_id) for e in rows]
    return searchset("Encounter", resources, total=total, count=count, offset=offset)


def _risk_query() -> Select[Prediction, str, str, datetime | None, str | None]:
    """Champion predictions with their model version and their stay's id and withdrawal."""
    return (
        select(
            Prediction,
            ModelVersion.version,
            Encounter.public_id.label("encounter_public_id"),
            Encounter.withdrawn_at,
            Encounter.withdrawn_reason,
        )
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .outerjoin(Encounter, Encounter.id == Prediction.encounter_id)
        .where(Prediction.role == "champion")
    )


@fhir.get("/RiskAssessment")
@requires(Permission.PATIENTS_READ)
def search_risk() -> Response:
    """A patient's champion risks, newest first, by ``date`` of the risk."""
    check_search_params(RISK_PARAMS)
    count, offset = paging(100, 5000)
    patient = get_patient_or_raise(db(), _patient_param())
    query = _date_filters(
        _risk_query().where(Prediction.patient_id == patient.id), Prediction.as_of
    )
    order = (Prediction.as_of.desc(), Prediction.id.desc())
    rows = db().execute(query.order_by(*order).offset(offset).limit(count)).all()
    total = count_matches(db(), query)
    audit_event(
        "prediction.history.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/RiskAssessment",
    )
    resources = [_risk_resource(row, patient.public_id) for row in rows]
    return searchset("RiskAssessment", resources, total=total, count=count, offset=offset)


@fhir.get("/RiskAssessment/<risk_id>")
@requires(Permission.PATIENTS_READ)
def read_risk(risk_id: str) -> Response:
    row = db().execute(_risk_query().where(Prediction.public_id == risk_id)).first()
    if row is None or row[0].patient_id is None:
        raise NotFound("no RiskAssessment with that id")
    patient = db().get(Patient, row[0].patient_id)
    assert patient is not None
    check_patient_visible(db(), patient, refusal=NotFound("no RiskAssessment with that id"))
    audit_event(
        "prediction.viewed",
        "R",
        patient_id=patient.public_id,
        resource=f"fhir/RiskAssessment/{risk_id}",
    )
    return _respond(_risk_resource(row, patient.public_id))
