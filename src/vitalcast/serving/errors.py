"""One renderer for every error: canonical JSON for API clients, an OperationOutcome under
the FHIR base, a page for browsers."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException

from vitalcast.errors import AppError
from vitalcast.serving.context import request_id
from vitalcast.serving.fhir_outcome import FHIR_BASE, outcome_response, under_fhir_base

logger = logging.getLogger(__name__)

_JSON_PREFIXES = ("/api/", FHIR_BASE, "/cds-services", "/healthz", "/readyz", "/metrics")


def wants_json() -> bool:
    """API paths always get JSON; elsewhere, JSON when the client prefers it."""
    if request.path.startswith(_JSON_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def render_error(error: AppError) -> tuple[Response | str, int]:
    """``error`` as its caller reads errors: FHIR clients (anything under the FHIR base,
    whoever raised it) an OperationOutcome, API clients the canonical JSON, browsers a
    page."""
    if under_fhir_base(request.path):
        return outcome_response(error), error.status
    rid = request_id()
    if wants_json():
        return jsonify(error.to_dict(rid)), error.status
    return (
        render_template("errors/error.html", status=error.status, error=error, request_id=rid),
        error.status,
    )


def _http_code(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }.get(status, "http_error")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(error: AppError) -> tuple[Response | str, int]:
        return render_error(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        app_error = AppError(error.description or error.name, code=_http_code(status))
        app_error.status = status
        response = make_response(render_error(app_error))
        # werkzeug's own headers of the error (a 405's Allow, which RFC 9110 requires),
        # but not its Content-Type: the body is ours.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response | str, int]:
        logger.exception("unhandled error")
        app_error = AppError(
            "internal error; quote the request id when reporting it", code="internal_error"
        )
        return render_error(app_error)
