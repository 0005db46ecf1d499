"""Monitoring read API for the UI and for people: drift, performance, alerts (monitoring:read).

No patient data is served here: features, units, rates and model versions only.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field

from vitalcast.monitoring.alerts import list_alerts
from vitalcast.monitoring.rules import judged_by
from vitalcast.monitoring.service import latest_drift_run, latest_monitor_run
from vitalcast.monitoring.tables import DriftRun, MonitorAlert
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import db
from vitalcast.serving.openapi import operation
from vitalcast.serving.schemas import AlertList, MonitoringSummary, Token, parse_query

monitoring_api = Blueprint("monitoring_api", __name__)

DEFAULT_TASK = "icu-mortality"


class SummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo'd parameter is a 422, not ignored
    task: Token = Field(DEFAULT_TASK, description="whose monitoring, e.g. icu-mortality")


class AlertsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    all: bool = Field(False, description="include resolved alerts")


def _drift(run: DriftRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run.id,
        "model_version_id": run.model_version_id,
        "window_start": run.window_start.isoformat(),
        "window_end": run.window_end.isoformat(),
        "n_recent": run.n_recent,
        "severity": run.severity,
        "flagged": run.flagged,
        "created_at": run.created_at.isoformat(),
        "features": [r.details | {"feature": r.feature} for r in run.results],
    }


def _alert(a: MonitorAlert) -> dict[str, Any]:
    return {
        "id": a.id,
        "rule": a.rule,
        "severity": a.severity,
        "state": a.state,
        "dedup_key": a.dedup_key,
        "summary": a.summary,
        "details": a.details,
        "first_seen_at": a.first_seen_at.isoformat(),
        "last_seen_at": a.last_seen_at.isoformat(),
        "occurrences": a.occurrences,
        "acknowledged_by": a.acknowledged_by,
        "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
        "delivery": a.delivery,
    }


@monitoring_api.get("/monitoring/summary")
@requires(Permission.MONITORING_READ)
@operation(
    "Drift, performance and live alerts",
    MonitoringSummary,
    query=SummaryQuery,
    tags=("monitoring",),
)
def summary() -> Response:
    """Latest drift run, latest monitoring run (realised performance and CBPE estimate,
    each labelled), and live alerts, for one task: its own alerts and the task-independent
    ones (stale data, error rate), never another task's."""
    task = parse_query(SummaryQuery).task
    session = db()
    run = latest_monitor_run(session, task=task)
    return jsonify(
        {
            "task": task,
            "drift": _drift(latest_drift_run(session, task=task)),
            "monitor_run": None
            if run is None
            else {"id": run.id, "started_at": run.started_at.isoformat(), **run.results},
            "alerts": [
                _alert(a) for a in list_alerts(session) if judged_by(a.rule, a.dedup_key, task)
            ],
        }
    )


@monitoring_api.get("/monitoring/alerts")
@requires(Permission.MONITORING_READ)
@operation("Monitoring alerts", AlertList, query=AlertsQuery, tags=("monitoring",))
def alerts() -> Response:
    """Monitoring alerts, newest first (``?all=1`` includes resolved ones)."""
    include = parse_query(AlertsQuery).all
    return jsonify({"items": [_alert(a) for a in list_alerts(db(), include_resolved=include)]})
