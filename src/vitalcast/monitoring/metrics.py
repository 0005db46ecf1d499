"""Operational metrics in the Prometheus format, and the restricted ``GET /metrics``.

Counters and histograms live in this process (or, under gunicorn, in
prometheus-client's multiprocess files: ``vitalcast serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at an emptied directory *before* any worker imports
prometheus-client, and removes a dead worker's live gauges). Figures that belong to the
whole deployment rather than to a process — the latest drift scores, open alerts, how old
each unit's newest observation is — are read from the database at scrape time, so every
worker reports the same values and a batch job (``vitalcast monitor drift``) needs no
push gateway.

Call sites (one line each):

* predictions: :func:`observe_prediction` when a stored score's transaction commits
  (:func:`vitalcast.db.session.after_commit`: a rolled-back one is not counted);
* ingest: :func:`observe_ingest` with each committed
  :class:`~vitalcast.ingest.report.IngestReport`;
* stream rescoring: :func:`observe_stream_rescore_failure` when stays could not be scored
  after a stream's commit (they are retried);
* model loading: :func:`observe_model_load` with the seconds a load took;
* requests: timed by :func:`register_monitoring` through Flask's ``request_started`` and
  ``request_finished`` signals, which fire whatever the permission guard decides.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vitalcast.monitoring.multiproc import MULTIPROC_ENV
from vitalcast.security.permissions import Permission, requires

if TYPE_CHECKING:
    from vitalcast.ingest.report import IngestReport
    from vitalcast.serving.state import AppState

logger = logging.getLogger(__name__)


# Latency buckets for a JSON API whose hot path is a few milliseconds and whose slowest
# pages run a database query or two; 30 s is the gunicorn timeout's neighbourhood.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUEST_SECONDS = Histogram(
    "vitalcast_http_request_duration_seconds",
    "Time to build each HTTP response, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "vitalcast_http_requests",
    "HTTP responses, by route template, method and status code.",
    ["route", "method", "status"],
)
ERRORS = Counter(
    "vitalcast_http_errors",
    "HTTP responses with status >= 400, by route template and status code.",
    ["route", "status"],
)
PREDICTIONS = Counter(
    "vitalcast_predictions",
    "Risk scores stored, by model version, risk band and role (champion or challenger).",
    ["model_version", "band", "role"],
)
INGEST_RECORDS = Counter(
    "vitalcast_ingest_records",
    "Records received by ingestion, by source, record kind and fate.",
    ["source", "kind", "fate"],
)
QUARANTINED = Counter(
    "vitalcast_ingest_quarantined",
    "Records quarantined by ingestion, by source and reason code.",
    ["source", "reason"],
)
STREAM_RESCORE_FAILURES = Counter(
    "vitalcast_stream_rescore_failures",
    "Stays whose rescoring after stream ingestion (MQTT, MLLP) failed and is retried,"
    " by source. The observations were stored and acknowledged all the same.",
    ["source"],
)
MODEL_LOAD_SECONDS = Gauge(
    "vitalcast_model_load_seconds",
    "Seconds the last load and verification of each model version took.",
    ["model_version", "role"],
    multiprocess_mode="max",
)


def observe_prediction(*, model_version: str, band: str, role: str = "champion") -> None:
    """Count one stored prediction."""
    PREDICTIONS.labels(model_version, band, role).inc()


def observe_ingest(report: IngestReport) -> None:
    """Count an ingest run's records by fate, and its quarantined ones by reason."""
    for kind, counts in report.kinds.items():
        for fate in ("stored", "duplicates", "quarantined"):
            value = getattr(counts, fate)
            if value:
                INGEST_RECORDS.labels(report.source, kind, fate).inc(value)
    for reason, count in report.reasons.items():
        QUARANTINED.labels(report.source, reason).inc(count)


def observe_stream_rescore_failure(*, source: str, stays: int) -> None:
    """Count stays whose rescoring failed after their data was stored from a stream."""
    STREAM_RESCORE_FAILURES.labels(source).inc(stays)


def observe_model_load(*, model_version: str, role: str, seconds: float) -> None:
    """Record how long loading (and verifying) a model took."""
    MODEL_LOAD_SECONDS.labels(model_version, role).set(seconds)


# --------------------------------------------------------------------------- request timing


def _route() -> str:
    # The rule template (``/api/v1/patients/<public_id>``), never the concrete path: a
    # path would put patient ids into labels and grow the series without bound.
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _started(_sender: Flask, **_extra: Any) -> None:
    g.metrics_started = time.perf_counter()


def _finished(_sender: Flask, response: Response, **_extra: Any) -> None:
    started = g.get("metrics_started")
    route, status = _route(), str(response.status_code)
    if started is not None:
        REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    REQUESTS.labels(route, request.method, status).inc()
    if response.status_code >= 400:
        ERRORS.labels(route, status).inc()


# --------------------------------------------------------------------------- database figures


class StoreCollector(Collector):
    """Deployment-wide gauges read from the database at scrape time."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from vitalcast.monitoring.service import store_gauges

        with self.state.sessions() as session:
            gauges = store_gauges(session)
        psi = GaugeMetricFamily(
            "vitalcast_drift_psi",
            "PSI of the latest drift run, per model version and feature (score: __score__).",
            labels=["model_version", "feature"],
        )
        flagged = GaugeMetricFamily(
            "vitalcast_drift_flagged",
            "1 when the latest drift run flagged the feature (moderate or major), else 0.",
            labels=["model_version", "feature"],
        )
        for row in gauges.drift:
            labels = [row.model_version, row.feature]
            if row.psi is not None:
                psi.add_metric(labels, row.psi)
            flagged.add_metric(labels, 1.0 if row.flagged else 0.0)
        alerts = GaugeMetricFamily(
            "vitalcast_alerts_open",
            "Monitoring alerts not yet resolved, by rule and severity.",
            labels=["rule", "severity"],
        )
        for (rule, severity), count in gauges.open_alerts.items():
            alerts.add_metric([rule, severity], count)
        age = GaugeMetricFamily(
            "vitalcast_newest_observation_age_seconds",
            "Seconds since the newest observation of any open encounter, per unit.",
            labels=["unit"],
        )
        for unit, seconds in gauges.observation_age_s.items():
            age.add_metric([unit], seconds)
        yield from (psi, flagged, alerts, age)


# --------------------------------------------------------------------------- exposition


def multiprocess_dir() -> str | None:
    """The multiprocess directory when prometheus-client runs in multiprocess mode."""
    # prometheus-client itself reads this variable (at import); we only mirror its choice.
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(state: AppState) -> bytes:
    """The text exposition of process (or all workers') metrics plus database gauges."""
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        process_part = generate_latest(registry)
    else:
        process_part = generate_latest(REGISTRY)
    store = CollectorRegistry()
    store.register(StoreCollector(state))
    return process_part + generate_latest(store)


def metrics_view() -> Response:
    """Prometheus scrape endpoint (needs monitoring:read, or the configured scrape token)."""
    from vitalcast.serving.state import get_state

    return Response(exposition(get_state()), mimetype=CONTENT_TYPE_LATEST)


def _scrape_token_gate() -> Response | None:
    """Answer ``/metrics`` for a scraper presenting ``VITALCAST_METRICS_TOKEN``.

    Runs before the permission guard (first in the before-request chain): a Prometheus
    server has a bearer token, not a user or an API key. Anyone else falls through to the
    guard, which demands monitoring:read as for any view.
    """
    if request.endpoint != "metrics":
        return None
    from vitalcast.serving.state import get_state

    token = get_state().settings.metrics_token
    header = request.headers.get("Authorization", "")
    scheme, _, sent = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not sent:
        return None
    if hmac.compare_digest(sent.strip().encode(), token.get_secret_value().encode()):
        return metrics_view()
    return None


def register_monitoring(app: Flask) -> None:
    """Time every request, serve ``GET /metrics`` and the monitoring read API.

    Call from ``create_app`` (anywhere among the ``register_*`` steps).
    """
    from flask import request_finished, request_started

    request_started.connect(_started, app)
    request_finished.connect(_finished, app)
    app.add_url_rule(
        "/metrics", endpoint="metrics", view_func=requires(Permission.MONITORING_READ)(metrics_view)
    )
    from vitalcast.monitoring.api import monitoring_api

    # The lead may move this line into register_blueprints (the URL map in one place).
    app.register_blueprint(monitoring_api, url_prefix="/api/v1")
    app.before_request_funcs.setdefault(None, []).insert(0, _scrape_token_gate)
