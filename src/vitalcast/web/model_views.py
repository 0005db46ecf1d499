"""Model governance pages: registered versions and their metrics, and monitoring.

They show what the registry rows hold (alias, threshold, metrics sidecar); the richer
report (plots, subgroups) and the monitoring figures come from the modeling and
monitoring capabilities as they land, through the same rows.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

from flask import Blueprint, Response, render_template
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.errors import NotFound
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.monitoring.alerts import list_alerts
from vitalcast.monitoring.drift import Severity
from vitalcast.monitoring.service import latest_drift_run, latest_monitor_run
from vitalcast.security.permissions import Permission, requires
from vitalcast.serving.context import audit_event, db
from vitalcast.serving.schemas import Band
from vitalcast.web.tables import Feedback

web_models = Blueprint("web_models", __name__)

_ALIAS_ORDER = {"champion": 0, "challenger": 1}


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metric dicts as (dotted name, value) rows, for a plain table."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flat_metrics(value, name + "."))
        elif isinstance(value, list) and len(value) > 12:
            rows.append((name, f"{len(value)} values"))
        elif isinstance(value, list) and all(_is_number(v) for v in value):
            # Numbers as the table shows single values; an interval (``auroc_ci``) as lo – hi.
            joiner = " – " if key.endswith("_ci") else ", "
            rows.append((name, joiner.join(f"{v:.4g}" for v in value)))
        else:
            rows.append((name, value))
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@web_models.get("/models")
@requires(Permission.MODELS_READ)
def models() -> str:
    """Every registered version, champion and challenger first."""
    rows = db().scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
    ordered = sorted(rows, key=lambda m: (_ALIAS_ORDER.get(m.alias or "", 2), -m.id))
    audit_event("model.list", "R", resource="ModelVersion")
    return render_template("web/models.html", versions=ordered)


@web_models.get("/models/<version>")
@requires(Permission.MODELS_READ)
def model(version: str) -> str:
    """One version's registry record and metrics."""
    row = db().scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound("no model with that version")
    audit_event("model.viewed", "R", resource=f"ModelVersion/{row.version}")
    return render_template("web/model.html", m=row, metrics=flat_metrics(row.metrics or {}))


# The model card is a self-contained document with its own inline style sheet; it gets a
# policy allowing that style and nothing else (still no scripts, no other origin).
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


@web_models.get("/models/<version>/report")
@requires(Permission.MODELS_READ)
def model_report(version: str) -> Response:
    """The model card (modeling.report) rendered from the version's registry sidecar."""
    from vitalcast.modeling.external_validation import evaluations_of
    from vitalcast.modeling.registry import RegistryError
    from vitalcast.modeling.report import render_html
    from vitalcast.modeling.service import sidecar_of

    row = db().scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound("no model with that version")
    try:
        sidecar = sidecar_of(row)
    except RegistryError as exc:
        raise NotFound(f"no report for this version: {exc}") from exc
    try:
        # Stored evaluations are the figures on unseen data: the card shows them too.
        evaluations = evaluations_of(Path(row.artifact_path).parent)
    except (OSError, RegistryError):  # a record damaged on disk; never a card without it
        raise NotFound("no report for this version: a stored evaluation cannot be read") from None
    document = render_html(sidecar, evaluations)
    audit_event("model.report.viewed", "R", resource=f"ModelVersion/{row.version}")
    response = Response(document, mimetype="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


# Bands and drift severities, mildest first, as their types declare them.
_BANDS: tuple[str, ...] = get_args(Band)
_SEVERITIES: tuple[str, ...] = get_args(Severity)


def _worst_first(order: tuple[str, ...], value: str) -> int:
    """Sort key putting the most severe of ``order`` first, anything unknown last."""
    return -order.index(value) if value in order else 1


def _model_health(session: Session) -> list[dict[str, Any]]:
    """Per task with a champion: its newest monitoring run (realised performance on
    outcome-joined scores, and the CBPE estimate from scores alone, each labelled as
    what it is) and its newest drift run's flagged features.

    Why on this page: they were served only by ``GET /api/v1/monitoring/summary``, so a
    person on the Monitoring page saw score counts while the drift and calibration the
    monitor had found stayed out of sight.
    """
    tasks = session.scalars(
        select(ModelVersion.task)
        .where(ModelVersion.alias == "champion")
        .order_by(ModelVersion.task)
    ).all()
    health = []
    for task in tasks:
        run = latest_monitor_run(session, task=task)
        results = run.results if run is not None else {}
        drift = latest_drift_run(session, task=task)
        flagged = [] if drift is None else [r for r in drift.results if r.severity != "none"]
        health.append(
            {
                "task": task,
                "run_at": run.started_at if run is not None else None,
                "realised": (results.get("performance") or {}).get("overall"),
                "estimate": results.get("estimate"),
                "drift": drift,
                "drifted": sorted(
                    flagged, key=lambda r: (_worst_first(_SEVERITIES, r.severity), r.feature)
                ),
            }
        )
    return health


@web_models.get("/monitoring")
@requires(Permission.MONITORING_READ)
def monitoring() -> str:
    """The monitor's findings (open alerts, realised and estimated performance, drift)
    and operational figures from the store."""
    session = db()
    now = utcnow()
    day = now - timedelta(hours=24)
    hour = now - timedelta(hours=1)
    # Champion scores only, as the band table counts them: shadow (challenger) scores are
    # never shown to clinicians, and counting them made the tiles and the table disagree.
    champion = Prediction.role == "champion"
    scored_day = session.scalar(
        select(func.count()).select_from(Prediction).where(Prediction.created_at >= day, champion)
    )
    scored_hour = session.scalar(
        select(func.count()).select_from(Prediction).where(Prediction.created_at >= hour, champion)
    )
    by_band = session.execute(
        select(Prediction.band, func.count())
        .where(Prediction.created_at >= day, Prediction.role == "champion")
        .group_by(Prediction.band)
    ).all()
    quarantined = session.execute(
        select(QuarantineItem.reason_code, func.count())
        .where(QuarantineItem.received_at >= day)
        .group_by(QuarantineItem.reason_code)
        .order_by(func.count().desc())
    ).all()
    verdicts = session.execute(
        select(Feedback.kind, func.count())
        .where(Feedback.created_at >= day)
        .group_by(Feedback.kind)
    ).all()
    audit_event("monitoring.viewed", "R", resource="Monitoring")
    return render_template(
        "web/monitoring.html",
        scored_day=scored_day or 0,
        scored_hour=scored_hour or 0,
        # Highest first, as the ward lists risks: sorted by name, "high" came before
        # "low" and "medium" after it, which reads as a scale out of order.
        by_band=sorted(by_band, key=lambda row: _worst_first(_BANDS, row[0])),
        quarantined=quarantined,
        verdicts=sorted(verdicts),
        alerts=list_alerts(session),
        health=_model_health(session),
    )
