"""Read-only FHIR R4 endpoints over the canonical store (``/fhir``).

EHRs and SMART apps read vitalcast's results in their own language: Patient, Encounter
(read, and search by patient and status), Observation (search by patient, code and date,
sorted by date either way) and RiskAssessment built from stored predictions
(``prediction.probabilityDecimal``, ``occurrenceDateTime``). Resources are built and
validated with ``fhir.resources`` (its R4B models, whose shape equals R4 for these
resources). Every read is audited like any other patient-data read.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.riskassessment import RiskAssessment
from flask import Blueprint, Response, request, url_for
from sqlalchemy import Select, select

from vitalcast.clinical.codes import BY_CODE, LOINC
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.clinical.times import parse_iso
from vitalcast.errors import InvalidInput, NotFound
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.security.permissions import Permission, public, requires, role_allows
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.patient_api import check_patient_visible, get_patient_or_raise
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import int_arg, raise_if

fhir = Blueprint("fhir", __name__)

_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")

UCUM = "http://unitsofmeasure.org"
FHIR_JSON = "application/fhir+json"
_OUTCOMES = {"icu-mortality": "In-hospital death", "readmission-30d": "Readmission within 30 days"}
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# The store's encounter kinds as Encounter.class (v3 ActCode), the inverse of the choice
# the FHIR ingestion adapter makes (ACUTE and IMP both read back as inpatient stays).
_ENCOUNTER_CLASS = {"icu": "ACUTE", "inpatient": "IMP", "emergency": "EMER", "outpatient": "AMB"}


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


def _observation_resource(obs: Observation, patient_id: str) -> FhirObservation:
    spec = BY_CODE.get(obs.code)
    coding = {"system": spec.system if spec else LOINC, "code": obs.code}
    if spec:
        coding["display"] = spec.label
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(obs.id),
        "status": "final",
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": obs.effective_at.isoformat(),
    }
    if obs.value is not None:
        data["valueQuantity"] = {
            "value": obs.value,
            "unit": obs.unit,
            "system": UCUM,
            "code": obs.unit,
        }
    elif obs.value_text is not None:
        data["valueString"] = obs.value_text
    return FhirObservation.model_validate(data)


def _encounter_resource(enc: Encounter, patient_id: str) -> FhirEncounter:
    period = {"start": enc.admitted_at.isoformat()}
    if enc.discharged_at is not None:
        period["end"] = enc.discharged_at.isoformat()
    data: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": enc.public_id,
        "status": "finished" if enc.discharged_at is not None else "in-progress",
        "class": {"system": ACT_CODE, "code": _ENCOUNTER_CLASS.get(enc.kind, "IMP")},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": period,
    }
    if enc.unit:
        data["location"] = [{"location": {"display": enc.unit}}]
    return FhirEncounter.model_validate(data)


def _risk_resource(pred: Prediction, version: str, patient_id: str) -> RiskAssessment:
    return RiskAssessment.model_validate(
        {
            "resourceType": "RiskAssessment",
            "id": pred.public_id,
            "status": "final",
            "subject": {"reference": f"Patient/{patient_id}"},
            "occurrenceDateTime": pred.as_of.isoformat(),
            "method": {"text": f"vitalcast {pred.task} model {version}"},
            "prediction": [
                {
                    "outcome": {"text": _OUTCOMES.get(pred.task, pred.task)},
                    "probabilityDecimal": round(pred.score, 6),
                    "qualitativeRisk": {"text": pred.band},
                }
            ],
            "note": [{"text": "Decision support; complements clinical judgement."}],
        }
    )


def _searchset(resources: list[Any]) -> Response:
    base = f"{request.url_root.rstrip('/')}/fhir"
    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [
                {
                    "fullUrl": f"{base}/{r.get_resource_type()}/{r.id}",
                    "resource": json.loads(r.model_dump_json(exclude_none=True, by_alias=True)),
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
    )
    return _respond(bundle)


def _date_filters(query: _Q, column: Any) -> _Q:
    """FHIR ``date`` parameters with prefixes ge, gt, le, lt, eq (repeatable).

    Read by the shared time rule (:func:`vitalcast.clinical.times.parse_iso`): a year
    outside the clinical range is a 422 here, not an overflow in the database driver.
    """
    problems: list[dict[str, Any]] = []
    for raw in request.args.getlist("date"):
        prefix, value = (
            (raw[:2], raw[2:]) if raw[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", raw)
        )
        try:
            when = parse_iso(value, "date")
        except ValueError as exc:
            problems.append({"loc": ["query", "date"], "msg": str(exc)})
            continue
        if when.tzinfo is None:
            problems.append({"loc": ["query", "date"], "msg": "date-time needs a timezone"})
            continue
        ops = {
            "ge": column >= when,
            "gt": column > when,
            "le": column <= when,
            "lt": column < when,
            "eq": column == when,
        }
        query = query.where(ops[prefix])
    raise_if(problems, "invalid FHIR search parameters")
    return query


def _patient_param() -> str:
    raw = request.args.get("patient") or request.args.get("subject") or ""
    patient_id = raw.removeprefix("Patient/")
    if not patient_id:
        raise InvalidInput(
            "a patient is required", details=[{"loc": ["query", "patient"], "msg": "required"}]
        )
    return patient_id


@fhir.get("/metadata")
@public
def metadata() -> Response:
    """CapabilityStatement: what this read-only server offers."""
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
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
                    {
                        "type": "Encounter",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": "patient", "type": "reference"},
                            {"name": "status", "type": "token"},
                        ],
                    },
                    {
                        "type": "Observation",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [
                            {"name": n, "type": t}
                            for n, t in (
                                ("patient", "reference"),
                                ("code", "token"),
                                ("date", "date"),
                            )
                        ],
                    },
                    {
                        "type": "RiskAssessment",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [{"name": "patient", "type": "reference"}],
                    },
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
    problems: list[dict[str, Any]] = []
    count = int_arg("_count", 1000, low=1, high=10000, problems=problems)
    raise_if(problems, "invalid FHIR search parameters")
    patient = get_patient_or_raise(db(), _patient_param())
    query = select(Observation).where(Observation.patient_id == patient.id)
    code = request.args.get("code")
    if code:
        query = query.where(Observation.code == code.split("|")[-1])
    query = _date_filters(query, Observation.effective_at)
    sort = request.args.get("_sort", "date")
    if sort not in ("date", "-date"):
        raise InvalidInput(
            "invalid FHIR search parameters",
            details=[{"loc": ["query", "_sort"], "msg": "date or -date"}],
        )
    order = Observation.effective_at.desc() if sort == "-date" else Observation.effective_at
    rows = db().scalars(query.order_by(order, Observation.id).limit(count)).all()
    audit_event(
        "observation.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/Observation",
        details={"count": len(rows)},
    )
    return _searchset([_observation_resource(o, patient.public_id) for o in rows])


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


@fhir.get("/Encounter")
@requires(Permission.PATIENTS_READ)
def search_encounters() -> Response:
    """A patient's encounters, latest admission first; ``status`` is in-progress (not
    discharged) or finished."""
    problems: list[dict[str, Any]] = []
    count = int_arg("_count", 100, low=1, high=1000, problems=problems)
    status = request.args.get("status")
    if status not in (None, "in-progress", "finished"):
        problems.append({"loc": ["query", "status"], "msg": "in-progress or finished"})
    raise_if(problems, "invalid FHIR search parameters")
    patient = get_patient_or_raise(db(), _patient_param())
    query = select(Encounter).where(Encounter.patient_id == patient.id)
    if status == "in-progress":
        query = query.where(Encounter.discharged_at.is_(None))
    elif status == "finished":
        query = query.where(Encounter.discharged_at.is_not(None))
    rows = db().scalars(query.order_by(Encounter.admitted_at.desc()).limit(count)).all()
    audit_event(
        "encounter.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/Encounter",
        details={"count": len(rows)},
    )
    return _searchset([_encounter_resource(e, patient.public_id) for e in rows])


def _risk_query() -> Select[Prediction, str]:
    return (
        select(Prediction, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.role == "champion")
    )


@fhir.get("/RiskAssessment")
@requires(Permission.PATIENTS_READ)
def search_risk() -> Response:
    problems: list[dict[str, Any]] = []
    count = int_arg("_count", 100, low=1, high=5000, problems=problems)
    raise_if(problems, "invalid FHIR search parameters")
    patient = get_patient_or_raise(db(), _patient_param())
    query = _date_filters(
        _risk_query().where(Prediction.patient_id == patient.id), Prediction.as_of
    )
    rows = db().execute(query.order_by(Prediction.as_of.desc()).limit(count)).all()
    audit_event(
        "prediction.history.viewed",
        "R",
        patient_id=patient.public_id,
        resource="fhir/RiskAssessment",
    )
    return _searchset([_risk_resource(p, v, patient.public_id) for p, v in rows])


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
    return _respond(_risk_resource(row[0], row[1], patient.public_id))
