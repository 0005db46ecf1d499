"""The CDS Hooks request itself: the service's id and the checked shape of a hook call.

Split from :mod:`.cds_hooks` so that the routes there read as the hook's flow, and so that
:mod:`.cds_feedback` can share the service id and the 400 that lists every problem without
importing the module that registers it. The prefetch's contents are checked by
:mod:`.cds_prefetch`; this module checks the request around them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vitalcast.errors import BadRequest
from vitalcast.serving.cds_prefetch import prefetch_problems

SERVICE_ID = "vitalcast-icu-mortality"
# FHIR R4 id: https://hl7.org/fhir/R4/datatypes.html#id. Ids go into request paths.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HOOK_INSTANCE = re.compile(r"^[\x20-\x7e]{1,100}$")


@dataclass(frozen=True)
class HookRequest:
    hook_instance: str
    patient_id: str
    encounter_id: str | None
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any]


def parse_hook(body: Any) -> HookRequest:
    """The request, or 400 listing every problem with its place (``loc``).

    A malformed request, prefetch included (see :mod:`.cds_prefetch`), is the caller's
    error: 400, as CDS Hooks services answer a request they cannot parse. 412 stays for
    data that is missing and cannot be read from ``fhirServer``.
    """
    problems: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        raise BadRequest(
            "a CDS Hooks request is a JSON object",
            details=[{"loc": ["body"], "msg": "must be an object"}],
        )
    if body.get("hook") != "patient-view":
        problems.append({"loc": ["body", "hook"], "msg": "this service answers patient-view"})
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not _HOOK_INSTANCE.fullmatch(hook_instance):
        # It is audited: at most 100 printable characters (a UUID in practice).
        problems.append(
            {
                "loc": ["body", "hookInstance"],
                "msg": "required string of 1-100 printable characters",
            }
        )
    raw_context = body.get("context")
    context: dict[str, Any] = raw_context if isinstance(raw_context, dict) else {}
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not _FHIR_ID.fullmatch(patient_id):
        problems.append({"loc": ["body", "context", "patientId"], "msg": "required FHIR id"})
    encounter_id = context.get("encounterId")
    if encounter_id is not None and (
        not isinstance(encounter_id, str) or not _FHIR_ID.fullmatch(encounter_id)
    ):
        problems.append({"loc": ["body", "context", "encounterId"], "msg": "must be a FHIR id"})
    prefetch = body.get("prefetch")
    if prefetch is None:
        prefetch = {}
    elif isinstance(prefetch, dict):
        valid_id = (
            patient_id if isinstance(patient_id, str) and _FHIR_ID.fullmatch(patient_id) else None
        )
        problems += prefetch_problems(prefetch, valid_id)
    else:
        problems.append({"loc": ["body", "prefetch"], "msg": "must be an object"})
        prefetch = {}
    server = body.get("fhirServer")
    if server is not None and not isinstance(server, str):
        problems.append({"loc": ["body", "fhirServer"], "msg": "must be a URL string"})
    auth = body.get("fhirAuthorization")
    token = auth.get("access_token") if isinstance(auth, dict) else None
    if auth is not None and not (isinstance(token, str) and token):
        # A token that is not a string would be dropped, and the server read without it.
        problems.append(
            {
                "loc": ["body", "fhirAuthorization", "access_token"],
                "msg": "required string (fhirAuthorization is an object with access_token)",
            }
        )
    if auth is not None and server is None:
        # CDS Hooks 2.0 (cds-r-1): fhirAuthorization is only ever given with fhirServer.
        problems.append({"loc": ["body", "fhirServer"], "msg": "required with fhirAuthorization"})
    if problems:
        raise bad_request("the CDS Hooks request has problems", problems)
    return HookRequest(
        str(hook_instance),
        str(patient_id),
        str(encounter_id) if encounter_id else None,
        str(server) if isinstance(server, str) else None,
        str(token) if isinstance(token, str) and token else None,
        prefetch,
    )


def bad_request(what: str, problems: list[dict[str, Any]]) -> BadRequest:
    """400 with every problem in ``details``, and the first one, with its place, in the
    message: an EHR's log often keeps only the message."""
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return BadRequest(f"{what}: {where}: {first['msg']}{more}", details=problems)
