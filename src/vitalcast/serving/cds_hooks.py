"""CDS Hooks 2.0: the way EHRs (Epic, Oracle Health/Cerner, ...) ask for decision support.

``GET /cds-services`` describes the services; ``POST /cds-services/<id>`` answers the
``patient-view`` hook with a card holding the current risk, its trend and top factors;
``POST /cds-services/<id>/feedback`` stores what the clinician did with the card.
Requests are authenticated by a JWT the EHR signs (see :mod:`.cds_auth`, wired into the
request guard). Data comes from the hook's prefetch (a Patient and recent Observations)
or, when absent, from the EHR's FHIR server with the access token the hook supplies; it
passes through the same FHIR adapter and preprocessing rules as any ingested data.
Spec: https://cds-hooks.hl7.org/2.0/
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from vitalcast.clinical.records import RecordBatch
from vitalcast.db.base import utcnow
from vitalcast.errors import BadRequest, InvalidInput, ModelUnavailable, NotFound
from vitalcast.features import StayInput, stay_features
from vitalcast.ingest.validate import Invalid, check_observation
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import early_in_stay
from vitalcast.security.permissions import Permission, public, requires
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.predictor import Predictor
from vitalcast.serving.scoring import record_prediction
from vitalcast.serving.state import get_state
from vitalcast.serving.tables import CdsFeedback
from vitalcast.serving.validation import json_body

logger = logging.getLogger(__name__)

cds = Blueprint("cds", __name__)

SERVICE_ID = "vitalcast-icu-mortality"
_INDICATOR = {"low": "info", "medium": "info", "high": "warning", "critical": "critical"}
_FHIR_TIMEOUT_S = 5.0


def discovery_document() -> dict[str, Any]:
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": SERVICE_ID,
                "title": "vitalcast ICU mortality risk",
                "description": "Calibrated risk of in-hospital death from the ICU stay's "
                "vital signs and laboratory results so far, with its main reasons.",
                "prefetch": {
                    "patient": "Patient/{{context.patientId}}",
                    "observations": "Observation?patient={{context.patientId}}&_count=1000",
                },
                "usageRequirements": "Adult ICU patients; decision support only.",
            }
        ]
    }


@cds.get("")
@public
def discovery() -> Response:
    """The CDS Hooks discovery document."""
    return jsonify(discovery_document())


@dataclass(frozen=True)
class HookRequest:
    hook_instance: str
    patient_id: str
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any]


def _parse_hook(body: Any) -> HookRequest:
    problems: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        raise InvalidInput(
            "a CDS Hooks request is a JSON object",
            details=[{"loc": ["body"], "msg": "must be an object"}],
        )
    if body.get("hook") != "patient-view":
        problems.append({"loc": ["body", "hook"], "msg": "this service answers patient-view"})
    for key in ("hookInstance",):
        if not isinstance(body.get(key), str):
            problems.append({"loc": ["body", key], "msg": "required string"})
    context = body.get("context")
    patient_id = context.get("patientId") if isinstance(context, dict) else None
    if not isinstance(patient_id, str) or not patient_id:
        problems.append({"loc": ["body", "context", "patientId"], "msg": "required string"})
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        problems.append({"loc": ["body", "prefetch"], "msg": "must be an object"})
        prefetch = {}
    auth = body.get("fhirAuthorization") or {}
    token = auth.get("access_token") if isinstance(auth, dict) else None
    server = body.get("fhirServer")
    if not prefetch.get("patient") and not isinstance(server, str):
        problems.append(
            {"loc": ["body", "fhirServer"], "msg": "needed when the patient is not prefetched"}
        )
    if problems:
        raise InvalidInput("the CDS Hooks request has problems", details=problems)
    return HookRequest(str(body["hookInstance"]), str(patient_id), server, token, prefetch)


def _fetch(hook: HookRequest) -> dict[str, Any]:
    """Fetch what the prefetch lacks from the EHR's FHIR server with the hook's token."""
    prefetch = dict(hook.prefetch)
    if prefetch.get("patient") and prefetch.get("observations"):
        return prefetch
    assert hook.fhir_server is not None
    headers = {"Accept": "application/fhir+json"}
    if hook.access_token:
        headers["Authorization"] = f"Bearer {hook.access_token}"
    base = hook.fhir_server.rstrip("/")
    try:
        with httpx.Client(timeout=_FHIR_TIMEOUT_S, headers=headers) as client:
            if not prefetch.get("patient"):
                response = client.get(f"{base}/Patient/{hook.patient_id}")
                response.raise_for_status()
                prefetch["patient"] = response.json()
            if not prefetch.get("observations"):
                response = client.get(
                    f"{base}/Observation", params={"patient": hook.patient_id, "_count": 1000}
                )
                response.raise_for_status()
                prefetch["observations"] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BadRequest(f"could not read the patient from fhirServer: {exc}") from None
    return prefetch


def _records(prefetch: dict[str, Any]) -> RecordBatch:
    """Prefetched resources through the same FHIR adapter as ingested files."""
    from vitalcast.ingest.sources.fhir import parse_document

    entries = [{"resource": prefetch["patient"]}]
    observations = prefetch.get("observations") or {}
    if observations.get("resourceType") == "Bundle":
        entries += [e for e in observations.get("entry") or [] if isinstance(e, dict)]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return parse_document(json.dumps(bundle).encode(), "cds-prefetch").batch


def _stay(batch: RecordBatch, now: datetime) -> StayInput:
    patient = batch.patients[0] if batch.patients else None
    age = None
    if patient is not None and patient.birth_date is not None:
        age = (now.date() - patient.birth_date).days / 365.25
    observations = []
    for rec in batch.observations:
        try:
            clean = check_observation(rec, now=now)
        except Invalid:
            continue  # the same rules as ingestion: implausible or unknown values do not score
        if clean.value is not None:
            observations.append((clean.code, float(clean.value), clean.effective_at))
    observations.sort(key=lambda o: o[2])
    encounter = batch.encounters[0] if batch.encounters else None
    admitted = encounter.admitted_at if encounter else (observations[0][2] if observations else now)
    return StayInput(
        admitted_at=admitted,
        age_years=age,
        sex=patient.sex if patient else "unknown",
        unit=encounter.unit if encounter else None,
        height_cm=None,
        weight_kg=None,
        observations=tuple(observations),
    )


def _card(
    predictor: Predictor, prediction: Prediction, link: str, admitted_at: datetime
) -> dict[str, Any]:
    pct = round(prediction.score * 100)
    factors = prediction.explanation or []
    detail = "\n".join(
        f"- {f['label']}: {'raises' if f['contribution'] > 0 else 'lowers'} the risk"
        for f in factors[:5]
    )
    early = early_in_stay(prediction.task, admitted_at, prediction.as_of)
    caution = (
        f"Early in the stay: scored {early['hours']:.1f} h after admission, before"
        f" {early['first_landmark_h']:g} h, the earliest time the model is calibrated at;"
        " provisional.\n"
        if early
        else ""
    )
    threshold = f"{caution}Threshold {round(predictor.threshold * 100)}%."
    band = f"{prediction.band}, early" if early else prediction.band
    return {
        "uuid": prediction.public_id,
        "summary": f"ICU mortality risk {pct}% ({band})"[:140],
        "indicator": _INDICATOR.get(prediction.band, "info"),
        "detail": f"{threshold} Main factors:\n{detail}" if factors else threshold,
        "source": {"label": f"vitalcast ({predictor.version})", "url": link},
        "links": [{"label": "Open in vitalcast", "url": link, "type": "absolute"}],
    }


@cds.post("/<service_id>")
@requires(Permission.PREDICT)
def service(service_id: str) -> Response:
    """Answer a patient-view hook with one risk card."""
    if service_id != SERVICE_ID:
        raise NotFound(f"no CDS service {service_id!r}")
    predictor = get_state().predictor
    if predictor is None:
        raise ModelUnavailable("no champion model is loaded")
    hook = _parse_hook(json_body())
    now = datetime.now(UTC)
    stay = _stay(_records(_fetch(hook)), now)
    features = stay_features(stay, now)
    prediction = record_prediction(
        db(),
        predictor,
        features,
        role="cds",
        as_of=now,
        freshness=stay.observations[-1][2] if stay.observations else None,
    )
    audit_event(
        "cds.patient-view",
        "E",
        resource=f"cds/{service_id}",
        details={
            "hookInstance": hook.hook_instance,
            "card": prediction.public_id,
            "client": current_principal().name,
        },
    )
    settings = get_state().settings
    from flask import request

    base = (settings.public_url or request.host_url).rstrip("/")
    card = _card(predictor, prediction, f"{base}/ward", stay.admitted_at)
    return jsonify({"cards": [card]})


@cds.post("/<service_id>/feedback")
@requires(Permission.PREDICT)
def feedback(service_id: str) -> Response:
    """Store accepted/overridden outcomes of cards, with override reasons."""
    body = json_body()
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise InvalidInput(
            "feedback must be a non-empty list",
            details=[{"loc": ["body", "feedback"], "msg": "required list"}],
        )
    problems: list[dict[str, Any]] = []
    rows: list[CdsFeedback] = []
    session = db()
    for i, item in enumerate(items):
        loc = ["body", "feedback", i]
        if not isinstance(item, dict):
            problems.append({"loc": loc, "msg": "must be an object"})
            continue
        outcome = item.get("outcome")
        if outcome not in ("accepted", "overridden"):
            problems.append({"loc": [*loc, "outcome"], "msg": "accepted or overridden"})
        card = item.get("card")
        if not isinstance(card, str):
            problems.append({"loc": [*loc, "card"], "msg": "required string (card uuid)"})
            continue
        when = _timestamp(item.get("outcomeTimestamp"), [*loc, "outcomeTimestamp"], problems)
        reason = item.get("overrideReason") or {}
        reason_text = None
        if isinstance(reason, dict):
            coding = (reason.get("reason") or {}) if isinstance(reason.get("reason"), dict) else {}
            reason_text = coding.get("display") or coding.get("code")
            comment = reason.get("userComment")
        else:
            comment = None
        prediction_id = session.scalar(select(Prediction.id).where(Prediction.public_id == card))
        rows.append(
            CdsFeedback(
                service_id=service_id,
                card_uuid=card,
                prediction_id=prediction_id,
                outcome=str(outcome),
                override_reason=str(reason_text)[:300] if reason_text else None,
                user_comment=str(comment)[:1000] if comment else None,
                outcome_at=when or utcnow(),
                client=current_principal().name[:200],
            )
        )
    if problems:
        raise InvalidInput("the feedback has problems", details=problems)
    session.add_all(rows)
    audit_event(
        "cds.feedback",
        "C",
        resource=f"cds/{service_id}/feedback",
        details={"cards": [r.card_uuid for r in rows]},
    )
    return jsonify({"stored": len(rows)})


def _timestamp(raw: Any, loc: list[Any], problems: list[dict[str, Any]]) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        problems.append({"loc": loc, "msg": "must be an ISO 8601 date-time"})
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
