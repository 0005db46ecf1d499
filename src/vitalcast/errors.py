"""Exception tree and its one rendering.

::

    VitalcastError                  anything vitalcast raises on purpose
    ├── ConfigError                 bad settings: stops start-up with one line
    └── AppError(code, message, status, details)
        ├── InvalidInput    422     details: [{"loc": [...], "msg": ...}, ...]
        ├── BadRequest      400
        ├── Unauthorized    401
        ├── Forbidden       403
        ├── NotFound        404
        ├── Conflict        409
        ├── PreconditionFailed 412  data the request needs could not be obtained
        ├── PayloadTooLarge 413
        ├── ModelUnavailable 503    no champion model is loaded
        └── IngestError     422     input that could not be read at all

API routes and JSON clients get ``{"error": {"code", "message", "details",
"request_id"}}``; everything under the FHIR base an OperationOutcome
(:mod:`vitalcast.serving.fhir_outcome`); browser pages get
``templates/errors/<status>.html``.
"""

from __future__ import annotations

from typing import Any


class VitalcastError(Exception):
    """Root of every deliberate vitalcast error."""


class ConfigError(VitalcastError):
    """A setting is missing or wrong; the message names the variable."""


class AppError(VitalcastError):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        if code is not None:
            self.code = code

    def to_dict(self, request_id: str | None) -> dict[str, Any]:
        """The canonical JSON error body."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "request_id": request_id,
            }
        }


class InvalidInput(AppError):
    status = 422
    code = "invalid_input"


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class PreconditionFailed(AppError):
    """The data an answer needs is neither in the request nor obtainable (CDS Hooks: a
    service that cannot get the FHIR data it needs answers 412)."""

    status = 412
    code = "precondition_failed"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class ModelUnavailable(AppError):
    status = 503
    code = "model_unavailable"


class Busy(AppError):
    """A bounded resource of this server process is in use; the client should retry."""

    status = 503
    code = "busy"


class IngestError(AppError):
    status = 422
    code = "ingest_error"


def error_kind(exc: BaseException) -> str:
    """The class name of an unexpected error (the driver's, for a database error).

    What logs and one-line CLI messages may say about an error that is not vitalcast's
    own: its message can quote input values (``invalid input syntax for type integer:
    "..."``, a ``KeyError`` on a name), which may be patient data.
    """
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__
