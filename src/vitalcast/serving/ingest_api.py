"""Data in over HTTP: observation batches (rescored at once) and device bindings."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.records import PUBLIC_PATIENT_REF, RecordBatch
from vitalcast.clinical.tables import DeviceBinding as ClinicalDeviceBinding
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.db.session import after_commit
from vitalcast.errors import Conflict, NotFound
from vitalcast.ingest.devices import _DEVICE_ID as DEVICE_ID_RULE
from vitalcast.ingest.devices import (
    ENCOUNTER_NOT_FOUND,
    active_binding,
    bind_device,
    check_device_id,
    unbind_device,
)
from vitalcast.ingest.payloads import parse_observations_payload
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.device_payload import CompactObservation, attach_devices
from vitalcast.modeling.tables import public_probability
from vitalcast.monitoring.metrics import observe_ingest
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import (
    audit_event,
    current_agent,
    current_principal,
    db,
    request_id,
)
from vitalcast.serving.models import refresh_if_stale
from vitalcast.serving.openapi import operation
from vitalcast.serving.patient_api import (
    check_patient_visible,
    get_patient_or_raise,
)
from vitalcast.serving.rescoring import rescore_encounters
from vitalcast.serving.schemas import (
    BindingResult,
    DeviceBinding,
    IngestResult,
    UnbindingResult,
    parse_body,
)
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import json_body, located

# The device id rule is the ingest layer's own (one definition, documented from it).
_DEVICE_PATH = {"device_id": {"pattern": DEVICE_ID_RULE.pattern, "maxLength": 64}}

_ID = {"type": "string", "minLength": 1}

_FHIR_OBSERVATION = {
    "type": "object",
    "description": "a FHIR R5 Observation (subject Patient/<id>), validated by fhir.resources",
    "properties": {"resourceType": {"const": "Observation"}},
    "required": ["resourceType"],
}
_FHIR_BUNDLE = {
    "type": "object",
    "description": "a FHIR Bundle whose entries' resources are Observations",
    "properties": {"resourceType": {"const": "Bundle"}, "entry": {"type": "array"}},
    "required": ["resourceType", "entry"],
}
_OBSERVATIONS_BODY = {
    "oneOf": [
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 10000,
            "items": {
                "allOf": [
                    {"$ref": "#/components/schemas/CompactObservation"},
                    {
                        "properties": {"code": {"enum": sorted(BY_CODE)}},
                        "anyOf": [
                            {"required": ["patient"], "properties": {"patient": _ID}},
                            {"required": ["device"], "properties": {"device": _ID}},
                        ],
                    },
                    {
                        "anyOf": [
                            {"required": ["value"], "properties": {"value": {"type": "number"}}},
                            {
                                "required": ["value_text"],
                                "properties": {"value_text": {"type": "string"}},
                            },
                        ]
                    },
                ],
                "description": "a compact reading: a known code, a patient or a bound "
                "device, and a value or a value_text",
            },
        },
        _FHIR_OBSERVATION,
        _FHIR_BUNDLE,
    ]
}

ingest_api = Blueprint("ingest_api", __name__)


@ingest_api.post("/observations")
@requires(Permission.OBSERVATIONS_WRITE)
@operation(
    "Store observations and rescore their stays",
    IngestResult,
    status=201,
    body=_OBSERVATIONS_BODY,
    errors=(404,),
    tags=("ingest",),
    models=(CompactObservation,),
)
def post_observations() -> tuple[Response, int]:
    """Store a batch of observations (all-or-nothing on bad input) and rescore at once.

    A caller bound to units may write only to their patients: a batch naming any other
    patient (directly, or through a device bound to one) is refused whole with 404, and
    an unknown patient is then refused the same way, so the answer does not tell which.
    """
    batch = parse_observations_payload(request.get_data(cache=False))
    session = db()
    state = get_state()
    # A model promoted since the watcher's last poll is loaded now, before the batch's
    # audit event takes the lock under which the rescoring confirms it.
    refresh_if_stale(session, state)
    batch = attach_devices(session, batch)
    _check_units(session, batch)
    report = store_batch(
        session,
        batch,
        source="api",
        location=f"request {request_id()}",
        cipher=state.cipher,
        agent=current_agent(),
        name_patients=False,  # each patient gets its own observation.created event below
    )
    after_commit(session, lambda: observe_ingest(report))  # at the request's commit
    predictions = rescore_encounters(session, state, report.touched_encounters)
    totals = {
        "stored": report.stored,
        "quarantined": report.quarantined,
        "encounters": len(report.touched_encounters),
    }
    written = _patients_written(session, batch)
    # One event per patient, so that the audit trail of a patient (?patient_id=) lists
    # every write to their record; a batch naming no known patient is still recorded.
    for public_id, readings in written.items() or [(None, 0)]:
        details = totals if public_id is None else {**totals, "readings": readings}
        audit_event(
            "observation.created",
            "C",
            patient_id=public_id,
            resource="Observation",
            details=details,
        )
    summary: dict[str, Any] = report.to_dict()
    summary.pop("location", None)
    return jsonify(
        {
            "report": summary,
            "rescored": [
                {
                    "prediction_id": p.public_id,
                    "probability": public_probability(p.score),
                    "band": p.band,
                }
                for p in predictions
            ],
        }
    ), 201


def _named_patients(batch: RecordBatch) -> list[str]:
    """The public patient id of each reading that names one (not a device's)."""
    return [
        r.patient_ref.removeprefix(PUBLIC_PATIENT_REF)
        for r in batch.observations
        if r.patient_ref.startswith(PUBLIC_PATIENT_REF)
    ]


def _patients_written(session: Session, batch: RecordBatch) -> dict[str, int]:
    """The known patients the batch's readings name (devices already resolved), with how
    many readings each, by public id; unknown ids were quarantined, not written."""
    readings = Counter(_named_patients(batch))
    if not readings:
        return {}
    known = session.scalars(
        select(Patient.public_id).where(Patient.public_id.in_(sorted(readings)))
    ).all()
    return {public_id: readings[public_id] for public_id in sorted(known)}


def _check_units(session: Session, batch: RecordBatch) -> None:
    """Refuse a batch that names a patient the unit-bound caller may not see.

    Raises:
        NotFound: a referenced patient is unknown or outside the caller's units.
    """
    units = current_principal().units
    if not units:
        return
    public_ids = set(_named_patients(batch))
    visible = 0
    if public_ids:
        visible = len(
            session.scalars(
                select(Patient.id)
                .where(Patient.public_id.in_(sorted(public_ids)))
                .where(
                    select(Encounter.id)
                    .where(Encounter.patient_id == Patient.id, Encounter.unit.in_(sorted(units)))
                    .exists()
                )
            ).all()
        )
    if visible != len(public_ids) or any(
        not r.patient_ref.startswith(PUBLIC_PATIENT_REF) for r in batch.observations
    ):
        # Committed at once, as the guard commits its denials: the 404 rolls back the rest.
        audit_event(
            "access.denied",
            "C",
            outcome="denied",
            resource=request.path,
            details={"reason": "outside the caller's units", "patients": len(public_ids)},
        )
        session.commit()
        raise NotFound(
            "the batch names a patient that is unknown or outside your units; nothing was stored"
        )


# What a unit-bound caller learns of a device in use outside its units: that it is in use
# there (it could not bind it otherwise), never by whom or since when.
_BOUND_ELSEWHERE = (
    "device is bound to a patient outside your units; it can be unbound only from there"
)


@ingest_api.put("/devices/<device_id>/binding")
@requires(Permission.DEVICES_MANAGE)
@operation(
    "Bind a device to a patient",
    BindingResult,
    body=DeviceBinding,
    path=_DEVICE_PATH,
    errors=(409,),
    tags=("ingest",),
)
def put_binding(device_id: str) -> Response:
    """Bind a device to a patient (and optionally a stay): ``{"patient_id", "encounter_id"}``.

    The patient is looked up as the patient routes do, so a caller bound to units cannot
    bind a device (and so route its readings) to a patient outside them: 404, as for an
    unknown id. A stay of a patient outside them is answered as an unknown stay, and a
    device in use outside them as in use there (409, the answer its unbinding gets).
    """
    with located("path"):
        check_device_id(device_id)
    body = parse_body(DeviceBinding, json_body())
    session = db()
    patient = get_patient_or_raise(session, body.patient_id)
    if body.encounter_id is not None:
        encounter = session.scalar(
            select(Encounter).where(Encounter.public_id == body.encounter_id)
        )
        if encounter is not None and encounter.patient_id != patient.id:
            owner = session.get(Patient, encounter.patient_id)
            assert owner is not None
            check_patient_visible(session, owner, refusal=NotFound(ENCOUNTER_NOT_FOUND))
    current = active_binding(session, device_id)
    if current is not None and current.patient_id != patient.id:
        _bound_patient_or_refuse(session, current)
    with located("body"):  # the stay named belongs to another patient
        binding = bind_device(
            session,
            device_id=device_id,
            patient_public_id=body.patient_id,
            encounter_public_id=body.encounter_id,
        )
    audit_event("device.bound", "U", patient_id=body.patient_id, resource=f"Device/{device_id}")
    return jsonify({"device_id": device_id, "bound_at": binding.bound_at.isoformat()})


@ingest_api.delete("/devices/<device_id>/binding")
@requires(Permission.DEVICES_MANAGE)
@operation(
    "End a device's binding",
    UnbindingResult,
    path=_DEVICE_PATH,
    errors=(409,),
    tags=("ingest",),
)
def delete_binding(device_id: str) -> Response:
    """End the device's current binding.

    A device bound to a patient outside the caller's units is refused (409): unbinding it
    would cut that patient's monitoring off from their own unit. It is not answered as an
    unbound device, since binding it would then fail as in use.
    """
    session = db()
    with located("path"):
        check_device_id(device_id)
    current = active_binding(session, device_id)
    if current is None:
        raise NotFound("device is not bound")
    patient = _bound_patient_or_refuse(session, current)
    binding = unbind_device(session, device_id=device_id)
    audit_event(
        "device.unbound",
        "U",
        patient_id=patient.public_id,
        resource=f"Device/{device_id}",
        details={"binding": binding.id},
    )
    return jsonify(
        {
            "device_id": device_id,
            "unbound_at": binding.unbound_at.isoformat() if binding.unbound_at else None,
        }
    )


def _bound_patient_or_refuse(session: Session, binding: ClinicalDeviceBinding) -> Patient:
    """The patient ``binding`` measures, or a refusal (409, audited as a denial) when the
    caller may not see that patient.

    Raises:
        Conflict: the device measures a patient outside the caller's units.
    """
    patient = session.get(Patient, binding.patient_id)
    assert patient is not None
    check_patient_visible(session, patient, refusal=Conflict(_BOUND_ELSEWHERE))
    return patient
