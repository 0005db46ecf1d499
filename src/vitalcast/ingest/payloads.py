"""HTTP batch payloads for ``POST /api/v1/observations``: parse, validate, report ALL problems.

Accepted bodies (UTF-8 JSON):

* a list of compact observations ``{"code", "value", "unit", "time", "patient" | "device"}``
  (``patient``/``encounter`` are public ids; ``device`` is a bound device id),
* a FHIR Observation, a list of them (subject ``Patient/<public id>``), or
* a FHIR Bundle whose entries are Observations.

Unlike files and streams, an API caller is present to fix its request, so any problem
rejects the whole body with every problem and its location at once (422), and nothing is
stored. Codes outside the vocabulary are such a problem here. A body that is not UTF-8
JSON at all is a 400, as for every route (docs/api.md). Problems are located as every API
error is, from ``"body"`` on: ``["body", 0, "time"]``, ``["body", "entry", 2, "resource",
"valueQuantity", "value"]``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from vitalcast.clinical.codes import BY_CODE
from vitalcast.clinical.records import RecordBatch
from vitalcast.errors import BadRequest, InvalidInput
from vitalcast.ingest.sources.device_payload import (
    CompactObservation,
    compact_record,
    fhir_observation_batch,
    problems,
)
from vitalcast.ingest.sources.fhir import is_resource_type
from vitalcast.json_input import JsonInputError, parse_json

MAX_ITEMS = 10000

Loc = list[str | int]


def parse_observations_payload(body: bytes) -> RecordBatch:
    """Parse a request body into a RecordBatch (device readings not yet attached).

    The route then calls :func:`vitalcast.ingest.sources.device_payload.attach_devices`
    and :func:`vitalcast.ingest.service.store_batch` in one transaction.

    Raises:
        BadRequest: the body is not UTF-8, or not JSON that can be read.
        InvalidInput: every problem found, as ``details=[{"loc": [...], "msg": ...}]``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            "request body is not UTF-8 text",
            details=[{"loc": ["body"], "msg": f"invalid UTF-8 at byte {exc.start}"}],
        ) from None
    try:
        doc = parse_json(text)
    except JsonInputError as exc:
        raise BadRequest(
            "request body is not valid JSON", details=[{"loc": ["body"], "msg": str(exc)}]
        ) from None
    items, errors = _items(doc)
    if len(items) > MAX_ITEMS:
        errors.append({"loc": [], "msg": f"at most {MAX_ITEMS} observations per request"})
        items = items[:0]
    batch = RecordBatch()
    for loc, item in items:
        errors += _parse_item(item, loc, batch)
    if not items and not errors:
        errors.append({"loc": [], "msg": "no observations in the request"})
    if errors:
        raise InvalidInput(
            f"{len(errors)} problem{'s' if len(errors) > 1 else ''} in the request; nothing was"
            " stored",
            details=[{**e, "loc": ["body", *e["loc"]]} for e in errors],
        )
    return batch


def _items(doc: Any) -> tuple[list[tuple[Loc, Any]], list[dict[str, Any]]]:
    if isinstance(doc, list):
        return [([i], item) for i, item in enumerate(doc)], []
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        entries = doc.get("entry")
        if not isinstance(entries, list):
            return [], [{"loc": ["entry"], "msg": "a Bundle needs an entry list"}]
        out: list[tuple[Loc, Any]] = []
        errors = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                errors.append({"loc": ["entry", i], "msg": "entry has no resource"})
                continue
            out.append((["entry", i, "resource"], entry["resource"]))
        return out, errors
    if isinstance(doc, dict):
        return [([], doc)], []
    return [], [{"loc": [], "msg": "expected a list of observations, an Observation or a Bundle"}]


def _fhir_problems(exc: ValidationError, loc: Loc) -> list[dict[str, Any]]:
    """FHIR validation errors, each at its own path in the resource (input values left
    out: they may be PHI)."""
    return [
        {"loc": [*loc, *err["loc"]], "msg": f"not a valid FHIR R4B Observation: {err['msg']}"}
        for err in exc.errors()
    ]


def _parse_item(item: Any, loc: Loc, batch: RecordBatch) -> list[dict[str, Any]]:
    where = "/".join(map(str, loc)) or "body"
    if not isinstance(item, dict):
        return [{"loc": loc, "msg": "expected a JSON object"}]
    rtype = item.get("resourceType")
    if rtype is not None:
        if rtype != "Observation":
            known = isinstance(rtype, str) and is_resource_type(rtype)
            what = f"resourceType {rtype!r}" + ("" if known else " is not a FHIR resource type;")
            return [{"loc": [*loc, "resourceType"], "msg": f"{what} expected Observation"}]
        return _fhir_item(item, loc, where, batch)
    try:
        obs = CompactObservation.model_validate(item)
    except ValidationError as exc:
        return problems(exc, loc)
    errors: list[dict[str, Any]] = []
    if not obs.patient and not obs.device:
        errors.append({"loc": [*loc, "patient"], "msg": "give a patient id or a device id"})
    if obs.code not in BY_CODE:
        errors.append({"loc": [*loc, "code"], "msg": f"unknown code {obs.code!r}"})
    if obs.value is None and obs.value_text is None:
        errors.append({"loc": [*loc, "value"], "msg": "give a value or a value_text"})
    if not errors:
        batch.received += 1
        batch.observations.append(compact_record(obs, f"api:{where}", None))
    return errors


def _fhir_item(
    item: dict[str, Any], loc: Loc, where: str, batch: RecordBatch
) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    subject = item.get("subject")
    if subject is not None and not isinstance(subject, dict):
        # Checked before FHIR validation, which would report it too, because the
        # "required" check below needs an object to look into.
        return [{"loc": [*loc, "subject"], "msg": "subject must be a Reference object"}]
    if not isinstance(subject, dict) or not subject.get("reference"):
        errors.append({"loc": [*loc, "subject"], "msg": "subject (Patient/<id>) is required"})
    try:
        sub = fhir_observation_batch(item, f"api:{where}", None)
    except ValidationError as exc:
        return [*errors, *_fhir_problems(exc, loc)]
    for rej in sub.rejected:
        errors.append({"loc": loc, "msg": f"{rej.reason_code}: {rej.reason}"})
    for rec in sub.observations:
        if rec.code not in BY_CODE:
            errors.append({"loc": [*loc, "code"], "msg": f"unknown code {rec.code!r}"})
    if not errors:
        batch.extend(sub)
    return errors
