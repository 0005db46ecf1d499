"""``vitalcast monitor run``: gather the figures, evaluate every rule, reconcile alerts.

One run = one unit of work: whether the task has a champion, a drift run, the
outcome-joined performance and its CBPE estimate, alert burden, data freshness, error
rates; then this task's alerts (and the task-independent ones) opened, updated or
resolved, each audited and sent to the webhook, and a :class:`MonitorRun` row recording
what each rule found. Scheduling (cron, Kubernetes CronJob, Cloud Scheduler) is in
docs/maintenance-plan.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter
from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.errors import NotFound
from vitalcast.ingest.tables import IngestRun
from vitalcast.modeling.registry import Registered, RegistryError, verify_model
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.monitoring import performance as perf
from vitalcast.monitoring import rules
from vitalcast.monitoring.alerts import Notifier, Reconciled, reconcile
from vitalcast.monitoring.service import (
    FeatureLoader,
    features_from_store,
    labelled_window,
    newest_by_unit,
    run_drift,
    window_predictions,
)
from vitalcast.monitoring.tables import DriftRun, MonitorRun

logger = logging.getLogger(__name__)


@dataclass
class MonitorReport:
    """What one monitoring run measured and changed."""

    run: MonitorRun
    results: list[rules.RuleResult]
    reconciled: Reconciled
    drift_run: DriftRun | None


def run_monitor(
    session: Session,
    *,
    settings: Settings,
    task: str,
    notify: Notifier,
    policy: rules.Policy | None = None,
    now: datetime | None = None,
    load_features: FeatureLoader = features_from_store,
) -> MonitorReport:
    """Evaluate every rule for ``task`` and bring the alerts in line with the findings."""
    policy = policy or rules.Policy()
    now = now or utcnow()
    results: list[rules.RuleResult] = []
    extra: dict[str, Any] = {}
    model = session.scalar(
        select(ModelVersion).where(ModelVersion.task == task, ModelVersion.alias == "champion")
    )
    drift_run: DriftRun | None = None
    try:
        drift_run = run_drift(
            session,
            task=task,
            window_days=policy.drift_window_days,
            now=now,
            load_features=load_features,
        )
        results.append(rules.drift_rule(drift_run, task=task))
    except NotFound as exc:
        results.append(rules.RuleResult("drift", "skipped", exc.message))
    results.append(
        rules.champion_rule(
            task=task,
            has_champion=model is not None,
            in_use=_in_use(session, task),
            unservable=None if model is None else _unservable(model),
        )
    )
    if model is None:
        for rule in ("calibration", "alert_rate"):
            results.append(rules.RuleResult(rule, "skipped", f"no champion model for {task}"))
    else:
        results += _model_rules(session, model, policy, now, extra)
    results.append(rules.stale_rule(_ages(session, now), settings.stale_after_minutes))
    http = _http_counts(session, settings, task, extra)
    results.append(
        rules.error_rate_rule(
            _quarantine(session, now, policy),
            http,
            policy,
            scrape_error=extra.get("http_scrape_error"),
        )
    )
    reconciled = reconcile(session, results, task=task, notify=notify, now=now)
    run = MonitorRun(
        started_at=now,
        task=task,
        firing=sum(len(r.findings) for r in results),
        results={"rules": {r.rule: r.to_dict() for r in results}, **extra},
    )
    session.add(run)
    session.flush()
    return MonitorReport(run, results, reconciled, drift_run)


def _in_use(session: Session, task: str) -> bool:
    """Whether ``task`` has ever had a champion: any registered version (the first one
    registered becomes champion, and predictions need a version), whatever its alias now."""
    return (
        session.scalar(select(ModelVersion.id).where(ModelVersion.task == task).limit(1))
        is not None
    )


def _model_rules(
    session: Session,
    model: ModelVersion,
    policy: rules.Policy,
    now: datetime,
    extra: dict[str, Any],
) -> list[rules.RuleResult]:
    start = now - timedelta(days=policy.performance_window_days)
    labelled = labelled_window(session, model=model, start=start, end=now)
    realised = perf.evaluate_labelled(labelled, model.threshold)
    extra["performance"] = perf.summarise(
        labelled, model.threshold, subgroup_keys=("unit", "age", "sex")
    )
    recent = window_predictions(
        session, model=model, start=now - timedelta(days=policy.alert_window_days), end=now
    )
    extra["estimate"] = perf.estimate_performance(
        [p.score for p in recent], model.threshold
    ).to_dict()
    window = timedelta(days=policy.alert_window_days)
    current, _ = _alert_rate(session, model, now - window, now)
    baseline, baseline_alerts = _alert_rate(
        session, model, now - window - timedelta(days=policy.baseline_days), now - window
    )
    extra["alert_rate_per_100_patient_days"] = {"current": current, "baseline": baseline}
    task = model.task
    return [
        rules.calibration_rule(realised, policy, task=task),
        rules.alert_rate_rule(current, baseline, baseline_alerts, policy, task=task),
    ]


def _alert_rate(
    session: Session, model: ModelVersion, start: datetime, end: datetime
) -> tuple[float | None, int]:
    rows = session.execute(
        select(Prediction.encounter_id, Prediction.as_of, Prediction.score).where(
            Prediction.model_version_id == model.id,
            Prediction.as_of >= start,
            Prediction.as_of < end,
            Prediction.encounter_id.is_not(None),
        )
    ).all()
    points = [perf.PredictionPoint(r.encounter_id, r.as_of, r.score) for r in rows]
    alerts = perf.count_alerts(points, model.threshold)
    # Exposure: every stay this model was scoring during the window, rescored in it or not.
    scored = select(Prediction.encounter_id).where(
        Prediction.model_version_id == model.id, Prediction.as_of < end
    )
    stays = session.execute(
        select(Encounter.admitted_at, Encounter.discharged_at).where(
            Encounter.id.in_(scored),
            Encounter.admitted_at < end,
            (Encounter.discharged_at.is_(None)) | (Encounter.discharged_at > start),
            Encounter.withdrawn_at.is_(None),
        )
    ).all()
    days = perf.patient_days([(a, d) for a, d in stays], start, end)
    return perf.alert_rate_per_100_patient_days(alerts, days), alerts


def _ages(session: Session, now: datetime) -> dict[str, float]:
    return {unit: (now - at).total_seconds() for unit, at in newest_by_unit(session).items()}


def _quarantine(
    session: Session, now: datetime, policy: rules.Policy
) -> dict[str, tuple[int, int]]:
    since = now - timedelta(days=policy.alert_window_days)
    rows = session.execute(
        select(IngestRun.source, func.sum(IngestRun.received), func.sum(IngestRun.quarantined))
        .where(IngestRun.started_at >= since)
        .group_by(IngestRun.source)
    ).all()
    return {source: (int(received or 0), int(bad or 0)) for source, received, bad in rows}


def scrape_http_totals(url: str, token: str | None, *, timeout_s: float = 10.0) -> tuple[int, int]:
    """(responses, 5xx responses) so far, from this service's own ``/metrics``."""
    # Imported here: the CLI must not import prometheus-client before `serve` chooses its
    # multiprocess mode (monitoring/multiproc.py).
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=timeout_s)
    response.raise_for_status()
    total = errors = 0
    for family in text_string_to_metric_families(response.text):
        if family.name != "vitalcast_http_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += int(sample.value)
                errors += (
                    int(sample.value) if sample.labels.get("status", "").startswith("5") else 0
                )
    return total, errors


def _without_secrets(url: str) -> str:
    """``url`` without user, password, query or fragment: the reason a scrape failed is
    stored in the alert and POSTed to the webhook, and must not carry credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _http_counts(
    session: Session, settings: Settings, task: str, extra: dict[str, Any]
) -> tuple[int, int] | None:
    """Responses and 5xx since the previous run (counter resets count from zero)."""
    if not settings.metrics_url:
        return None
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    try:
        total, errors = scrape_http_totals(settings.metrics_url, token)
    except httpx.HTTPError as exc:
        logger.warning("metrics scrape failed", extra={"error": type(exc).__name__})
        extra["http_scrape_error"] = (
            f"{_without_secrets(settings.metrics_url)}: {type(exc).__name__}"
        )
        return None
    extra["http_totals"] = [total, errors]
    previous = session.scalar(
        select(MonitorRun).where(MonitorRun.task == task).order_by(MonitorRun.id.desc()).limit(1)
    )
    before = (previous.results or {}).get("http_totals") if previous else None
    if not before:
        return None
    if total < before[0]:  # the service restarted: counters began again at zero
        return total, errors
    return total - before[0], errors - before[1]


def _unservable(model: ModelVersion) -> str | None:
    """Why serving would refuse the champion's files (None: it would not), by the checks
    serving makes before it loads them (hashes, library versions; no deserialisation)."""
    try:
        verify_model(model.artifact_path, Registered.of(model))  # as load_registered does
    except RegistryError as exc:
        return str(exc)
    return None
