"""Errors under the FHIR base (``/fhir``) as R4 OperationOutcome resources.

A FHIR client reads an error's body as an OperationOutcome
(http://hl7.org/fhir/R4/http.html): the service's own error shape
(:meth:`vitalcast.errors.AppError.to_dict`) would be an unknown resource to it, and its
message lost. Every error answered under the base, the view's and the guard's alike
(401/403, 400/413, 404 for unknown paths, 405, 429, 500), becomes one here, with the same
HTTP status: one issue per problem the error lists (``details``), its ``diagnostics`` the
error's message, the query parameter the problem is about and the problem's own message,
its ``expression`` that parameter. The messages are the service's own, which never quote
input values. The request id, which the service's own shape carries in its body, is in
the ``X-Request-ID`` header of every answer.

The resource is built and validated with ``fhir.resources`` (its R4B model, whose
OperationOutcome is R4's). That model does not check ``issue.code`` against its required
value set: :data:`ISSUE_TYPES` spells the set out, and the unit tests hold every code
given here to it.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from flask import Response

from vitalcast.errors import AppError

FHIR_BASE = "/fhir"
FHIR_JSON = "application/fhir+json"

# The R4 IssueType value set (http://hl7.org/fhir/R4/valueset-issue-type.html).
ISSUE_TYPES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)

# What each status means to a FHIR client; another 4xx is "processing", another 5xx
# "exception".
ISSUE_BY_STATUS = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    500: "exception",
    503: "transient",
}


def under_fhir_base(path: str) -> bool:
    """Whether ``path`` is the FHIR base or below it (``/fhirx`` is not)."""
    return path == FHIR_BASE or path.startswith(FHIR_BASE + "/")


def issue_type(status: int) -> str:
    """The IssueType code of an error answered with HTTP ``status``."""
    return ISSUE_BY_STATUS.get(status, "exception" if status >= 500 else "processing")


def operation_outcome(error: AppError) -> OperationOutcome:
    """The OperationOutcome of ``error``: one issue per listed problem, else one."""
    code = issue_type(error.status)
    issues = [_issue(code, error.message, d) for d in error.details] or [
        _issue(code, error.message, {})
    ]
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": issues})


def outcome_response(error: AppError) -> Response:
    """``error`` answered as an OperationOutcome, with its status."""
    body = operation_outcome(error).model_dump_json(exclude_none=True, by_alias=True)
    return Response(body, status=error.status, mimetype=FHIR_JSON)


def _issue(code: str, message: str, detail: dict[str, Any]) -> dict[str, Any]:
    """One issue; its diagnostics name the parameter too, for clients that show only them."""
    expression = _expression(detail.get("loc"))
    parts = [message, expression, detail.get("msg")]
    diagnostics = ": ".join(p for p in parts if isinstance(p, str) and p.strip()) or code
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return issue


def _expression(loc: Any) -> str | None:
    """The query parameter a problem is located at (``["query", "date"]`` is ``date``).

    FHIRPath names no part of an HTTP request; for a search parameter the parameter's name
    is what FHIR servers give. Other places (the path, a body: the FHIR API takes none)
    are named by the error's message instead.
    """
    if (
        isinstance(loc, list)
        and len(loc) == 2
        and loc[0] == "query"
        and isinstance(loc[1], str)
        and loc[1].strip()
    ):
        return loc[1]
    return None
