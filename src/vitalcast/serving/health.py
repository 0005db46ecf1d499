"""Liveness and readiness probes (public: load balancers call them without credentials)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from vitalcast.security.permissions import public
from vitalcast.serving.state import get_state

health = Blueprint("health", __name__)


@health.get("/healthz")
@public
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@health.get("/readyz")
@public
def readyz() -> tuple[Response, int]:
    """Ready to serve: the database answers and a champion model is loaded."""
    state = get_state()
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError:
        checks["database"] = "unreachable"
    predictor = state.predictor
    checks["model"] = f"ok ({predictor.version})" if predictor else "no champion model"
    ready = all(v.startswith("ok") for v in checks.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), (
        200 if ready else 503
    )
