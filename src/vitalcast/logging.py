"""Logging set-up: the only place handlers and formats are configured.

Logs go to stdout (the web server) or stderr (the stream commands), one JSON object per
line in production, with the request id, route and user id attached by a filter. Callers
log identifiers and counts, never names, MRNs or raw payloads (patient data lives in the
database, under access control).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

request_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "vitalcast_request_context", default=None
)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Copy the current request's id, route and user onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get() or {}
        for key in ("request_id", "route", "user"):
            if not hasattr(record, key):
                setattr(record, key, ctx.get(key))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields kept."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _LiveStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is at emit time.

    A handler that kept the stream of the moment it was installed would write to a closed
    stream after a test runner or CLI harness swaps it, turning log calls into
    "--- Logging error ---" noise on stderr (and into the output of JSON-printing commands).
    """

    def __init__(self, target: Literal["stdout", "stderr"]) -> None:
        self.target = target
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stdout if self.target == "stdout" else sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(
    *, level: str = "INFO", json_lines: bool = True, to: Literal["stdout", "stderr"] = "stdout"
) -> None:
    """Install one handler on the ``vitalcast`` logger (idempotent).

    The web server logs to stdout. The stream commands log to stderr: their stdout carries
    the command's own lines (``listening ...``, the final report) that tools read.
    """
    logger = logging.getLogger("vitalcast")
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_vitalcast", False):
            logger.removeHandler(handler)
    handler = _LiveStreamHandler(to)
    handler._vitalcast = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    logger.addHandler(handler)


def reset_logging() -> None:
    """Remove the handler :func:`configure_logging` installed (tests, embedded uses)."""
    logger = logging.getLogger("vitalcast")
    for handler in list(logger.handlers):
        if getattr(handler, "_vitalcast", False):
            logger.removeHandler(handler)
    logger.propagate = True
