"""Alert rules, their deduplicated life cycle, webhook delivery and audit.

``vitalcast monitor run`` evaluates each rule into a :class:`RuleResult`; each firing
condition is a :class:`Finding` with a stable ``dedup_key``. :func:`reconcile` then keeps
one live alert per key: a new key opens an alert, a repeat only updates ``last_seen_at``
(and escalates severity), and a key that a rule no longer reports is resolved — but only
when that rule was actually evaluated this run (a rule skipped for lack of data leaves
its alerts alone) and judged that key for this run's task: a run of one task never
resolves another task's alerts (:func:`~vitalcast.monitoring.rules.judged_by`).
Opening, escalating, resolving and acknowledging are each audited and the first three
are POSTed to ``VITALCAST_ALERT_WEBHOOK_URL``; a failed delivery is retried on the next
run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.db.base import MAX_ROW_ID, utcnow
from vitalcast.errors import Conflict, NotFound
from vitalcast.monitoring.rules import RuleResult, judged_by
from vitalcast.monitoring.tables import MonitorAlert
from vitalcast.security import audit

logger = logging.getLogger(__name__)

ACTOR = "vitalcast-monitor"
Notifier = Callable[[str, MonitorAlert], str]
_SEVERITY_RANK = {"warning": 1, "critical": 2}


# --------------------------------------------------------------------------- life cycle


def webhook_notifier(url: str | None, *, timeout_s: float = 10.0) -> Notifier:
    """A notifier POSTing one JSON document per alert change; returns a delivery status."""

    def send(event: str, alert: MonitorAlert) -> str:
        if not url:
            return "not configured"
        try:
            response = httpx.post(url, json=alert_payload(event, alert), timeout=timeout_s)
        except httpx.HTTPError as exc:
            logger.warning("alert webhook failed", extra={"alert": alert.id, "error": str(exc)})
            return f"failed: {type(exc).__name__}"
        if response.is_success:
            return "sent"
        logger.warning(
            "alert webhook refused", extra={"alert": alert.id, "status": response.status_code}
        )
        return f"failed: HTTP {response.status_code}"

    return send


def alert_payload(event: str, alert: MonitorAlert) -> dict[str, Any]:
    """What the webhook receives: the alert, no patient data (units and features only)."""
    return {
        "source": "vitalcast",
        "event": event,
        "alert": {
            "id": alert.id,
            "rule": alert.rule,
            "severity": alert.severity,
            "state": alert.state,
            "dedup_key": alert.dedup_key,
            "summary": alert.summary,
            "first_seen_at": alert.first_seen_at.isoformat(),
            "last_seen_at": alert.last_seen_at.isoformat(),
            "occurrences": alert.occurrences,
            "details": alert.details,
        },
    }


@dataclass
class Reconciled:
    """What :func:`reconcile` changed."""

    opened: list[MonitorAlert] = field(default_factory=list)
    escalated: list[MonitorAlert] = field(default_factory=list)
    repeated: list[MonitorAlert] = field(default_factory=list)
    resolved: list[MonitorAlert] = field(default_factory=list)


def _audit(
    session: Session, event: str, action: audit.Action, alert: MonitorAlert, actor: str
) -> None:
    audit.record(
        session,
        audit.Event(
            event=f"monitoring.alert.{event}",
            action=action,
            actor=actor,
            resource=f"monitor_alert/{alert.id}",
            details={
                "rule": alert.rule,
                "severity": alert.severity,
                "dedup_key": alert.dedup_key,
                "delivery": alert.delivery,
            },
        ),
    )


def _notify(
    session: Session, notify: Notifier, event: str, alert: MonitorAlert, now: datetime
) -> None:
    alert.delivery = notify(event, alert)
    alert.notified_at = now
    action: audit.Action = "C" if event == "opened" else "U"
    _audit(session, event, action, alert, ACTOR)


def reconcile(
    session: Session,
    results: Iterable[RuleResult],
    *,
    task: str,
    notify: Notifier,
    now: datetime | None = None,
) -> Reconciled:
    """Open, update, escalate and resolve alerts so that they match this run's findings.

    ``task`` is the task whose rules ``results`` evaluated: only its alerts and the
    task-independent ones may be resolved. Every live alert is still looked up by key,
    so that a finding never opens a second incident of a key that is live.
    """
    now = now or utcnow()
    results = list(results)
    live = {
        a.dedup_key: a
        for a in session.scalars(select(MonitorAlert).where(MonitorAlert.state != "resolved"))
    }
    out = Reconciled()
    seen: set[str] = set()
    for finding in (f for r in results for f in r.findings):
        seen.add(finding.dedup_key)
        alert = live.get(finding.dedup_key)
        if alert is None:
            alert = MonitorAlert(
                rule=finding.rule,
                severity=finding.severity,
                state="open",
                dedup_key=finding.dedup_key,
                open_key=finding.dedup_key,
                summary=finding.summary[:500],
                details=finding.details,
                first_seen_at=now,
                last_seen_at=now,
                occurrences=1,
            )
            session.add(alert)
            session.flush()
            live[finding.dedup_key] = alert
            _notify(session, notify, "opened", alert, now)
            out.opened.append(alert)
            continue
        alert.last_seen_at = now
        alert.occurrences += 1
        alert.summary = finding.summary[:500]
        alert.details = finding.details
        if _SEVERITY_RANK[finding.severity] > _SEVERITY_RANK[alert.severity]:
            alert.severity = finding.severity
            _notify(session, notify, "escalated", alert, now)
            out.escalated.append(alert)
        elif alert.delivery and alert.delivery.startswith("failed"):
            _notify(session, notify, "opened", alert, now)  # retry the undelivered news
        out.repeated.append(alert)
    evaluated = {r.rule for r in results if r.status != "skipped"}
    for key, alert in live.items():
        if key in seen or alert.rule not in evaluated or not judged_by(alert.rule, key, task):
            continue
        alert.state = "resolved"
        alert.open_key = None
        alert.resolved_at = now
        _notify(session, notify, "resolved", alert, now)
        out.resolved.append(alert)
    session.flush()
    return out


def acknowledge_alert(session: Session, *, alert_id: int, actor: str) -> MonitorAlert:
    """Mark an alert as being handled (it stays live until its condition clears).

    Raises:
        NotFound: no such alert.
        Conflict: the alert is already resolved.
    """
    # An id beyond the id column names no alert (asking the database fails instead).
    alert = session.get(MonitorAlert, alert_id) if 0 < alert_id <= MAX_ROW_ID else None
    if alert is None:
        raise NotFound(f"no monitoring alert {alert_id}")
    if alert.state == "resolved":
        raise Conflict(f"alert {alert_id} is already resolved")
    alert.state = "acknowledged"
    alert.acknowledged_at = utcnow()
    alert.acknowledged_by = actor
    _audit(session, "acknowledged", "U", alert, actor)
    session.flush()
    return alert


def list_alerts(
    session: Session, *, include_resolved: bool = False, limit: int = 200
) -> list[MonitorAlert]:
    query = select(MonitorAlert).order_by(MonitorAlert.last_seen_at.desc()).limit(limit)
    if not include_resolved:
        query = query.where(MonitorAlert.state != "resolved")
    return list(session.scalars(query).all())
