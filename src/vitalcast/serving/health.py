"""Liveness and readiness probes (public: load balancers call them without credentials)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from vitalcast.security.permissions import public
from vitalcast.serving.state import get_state

if TYPE_CHECKING:
    from vitalcast.serving.realtime import EventBus

health = Blueprint("health", __name__)

# Seconds the probe waits for Redis: probes run often and must answer fast.
_TIMEOUT = 0.5


@health.get("/healthz")
@public
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@health.get("/readyz")
@public
def readyz() -> tuple[Response, int]:
    """Ready to serve: the database answers and a champion model is loaded.

    Redis, when configured, is reported but does not decide readiness: without it the API
    still serves (rate limits fall back to each worker's memory), and a load balancer
    that pulled every replica for a Redis outage would turn it into a whole one. Its
    failure is listed under ``degraded`` so that monitoring can alert on it.
    """
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
    degraded: list[str] = []
    if state.settings.redis_url:
        checks["redis"] = _redis_check(state.settings.redis_url, state.bus)
        if checks["redis"] != "ok":
            degraded.append("redis")
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    if degraded:
        body["degraded"] = degraded
    return jsonify(body), (200 if ready else 503)


def _redis_check(url: str, bus: EventBus | None) -> str:
    """ "ok", or what an unreachable Redis costs (never its address: it may hold a password)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=_TIMEOUT, socket_timeout=_TIMEOUT)
    try:
        client.ping()
        return "ok"
    except redis.RedisError:
        costs = "rate limits are counted in each worker's memory"
        if bus is not None and bus.kind == "redis":
            costs += "; live risk updates are not published"
        return f"unreachable ({costs})"
    finally:
        client.close()
