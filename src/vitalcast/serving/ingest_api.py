"""Data in over HTTP: observation batches (rescored at once) and device bindings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from vitalcast.errors import InvalidInput
from vitalcast.ingest.devices import bind_device, unbind_device
from vitalcast.ingest.payloads import parse_observations_payload
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources.device_payload import attach_devices
from vitalcast.monitoring.metrics import observe_ingest
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import audit_event, current_agent, db, request_id
from vitalcast.serving.rescoring import rescore_encounters
from vitalcast.serving.state import get_state
from vitalcast.serving.validation import json_body

ingest_api = Blueprint("ingest_api", __name__)


@ingest_api.post("/observations")
@requires(Permission.OBSERVATIONS_WRITE)
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
def put_binding(device_id: str) -> Response:
    """Bind a device to a patient (and optionally a stay): ``{"patient_id", "encounter_id"}``."""
    body = json_body()
    problems: list[dict[str, Any]] = []
    if not isinstance(body, dict) or not isinstance(body.get("patient_id"), str):
        problems.append({"loc": ["body", "patient_id"], "msg": "required string"})
    encounter = body.get("encounter_id") if isinstance(body, dict) else None
    if encounter is not None and not isinstance(encounter, str):
        problems.append({"loc": ["body", "encounter_id"], "msg": "must be a string"})
    if problems:
        raise InvalidInput("the binding request has problems", details=problems)
    binding = bind_device(
        db(),
        device_id=device_id,
        patient_public_id=body["patient_id"],
        encounter_public_id=encounter,
    )
    audit_event("device.bound", "U", patient_id=body["patient_id"], resource=f"Device/{device_id}")
    return jsonify({"device_id": device_id, "bound_at": binding.bound_at.isoformat()})


@ingest_api.delete("/devices/<device_id>/binding")
@requires(Permission.DEVICES_MANAGE)
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
