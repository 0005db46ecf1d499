"""Data in over HTTP: observation batches (rescored at once) and device bindings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from vitalcast.clinical.codes import BY_CODE
from vitalcast.ingest.devices import _DEVICE_ID as DEVICE_ID_RULE
from vitalcast.ingest.devices import bind_device, unbind_device
from vitalcast.ingest.payloads import parse_observations_payload
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.device_payload import CompactObservation, attach_devices
from vitalcast.monitoring.metrics import observe_ingest
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import audit_event, current_agent, db, request_id
from vitalcast.serving.openapi import operation
from vitalcast.serving.rescoring import rescore_encounters
from vitalcast.serving.schemas import (
    BindingResult,
    DeviceBinding,
    IngestResult,
    UnbindingResult,
    parse_body,
)
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import json_body

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
    tags=("ingest",),
    models=(CompactObservation,),
)
def post_observations() -> tuple[Response, int]:
    """Store a batch of observations (all-or-nothing on bad input) and rescore at once."""
    batch = parse_observations_payload(request.get_data(cache=False))
    session = db()
    state = get_state()
    batch = attach_devices(session, batch)
    report = store_batch(
        session,
        batch,
        source="api",
        location=f"request {request_id()}",
        cipher=state.cipher,
        agent=current_agent(),
    )
    observe_ingest(report)
    predictions = rescore_encounters(session, state, report.touched_encounters)
    audit_event(
        "observation.created",
        "C",
        resource="Observation",
        details={
            "stored": report.stored,
            "quarantined": report.quarantined,
            "encounters": len(report.touched_encounters),
        },
    )
    summary: dict[str, Any] = report.to_dict()
    summary.pop("location", None)
    return jsonify(
        {
            "report": summary,
            "rescored": [
                {"prediction_id": p.public_id, "probability": round(p.score, 4), "band": p.band}
                for p in predictions
            ],
        }
    ), 201


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
    """Bind a device to a patient (and optionally a stay): ``{"patient_id", "encounter_id"}``."""
    body = parse_body(DeviceBinding, json_body())
    binding = bind_device(
        db(),
        device_id=device_id,
        patient_public_id=body.patient_id,
        encounter_public_id=body.encounter_id,
    )
    audit_event("device.bound", "U", patient_id=body.patient_id, resource=f"Device/{device_id}")
    return jsonify({"device_id": device_id, "bound_at": binding.bound_at.isoformat()})


@ingest_api.delete("/devices/<device_id>/binding")
@requires(Permission.DEVICES_MANAGE)
@operation("End a device's binding", UnbindingResult, path=_DEVICE_PATH, tags=("ingest",))
def delete_binding(device_id: str) -> Response:
    """End the device's current binding."""
    binding = unbind_device(db(), device_id=device_id)
    audit_event(
        "device.unbound", "U", resource=f"Device/{device_id}", details={"binding": binding.id}
    )
    return jsonify(
        {
            "device_id": device_id,
            "unbound_at": binding.unbound_at.isoformat() if binding.unbound_at else None,
        }
    )
