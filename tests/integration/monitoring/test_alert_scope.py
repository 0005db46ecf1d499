"""Whose alerts a ``monitor run`` may resolve, and the alert for a task left without a
champion: both through ``run_monitor`` on PostgreSQL with the real webhook receiver."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.integration.monitoring.conftest import (
    NOW,
    Deployment,
    Receiver,
    register_model,
    scores,
)
from vitalcast.config import Settings
from vitalcast.modeling.service import promote
from vitalcast.monitoring.alerts import webhook_notifier
from vitalcast.monitoring.drift import reference_profile
from vitalcast.monitoring.jobs import MonitorReport, run_monitor
from vitalcast.monitoring.tables import MonitorAlert
from vitalcast.security.tables import AuditEvent

DRIFT_KEY = "drift:icu-mortality:lactate_last_all"


def _readmission(deployment: Deployment, tmp_path: Path) -> Deployment:
    """A second task's champion (score profile only) in the same database."""
    rng = np.random.default_rng(30)
    reference = {"n": 3000, "score": reference_profile(scores(rng, 3000).tolist())}
    model = register_model(
        deployment.session, tmp_path / "registry", task="readmission-30d", reference=reference
    )
    return Deployment(deployment.session, model, rng, next_id=100_000)


def _run(
    session: Session, settings: Settings, webhook: Receiver, task: str, minutes: float = 0
) -> MonitorReport:
    """One ``monitor run`` of ``task``, ``minutes`` after NOW, notifying the receiver."""
    return run_monitor(
        session,
        settings=settings,
        task=task,
        notify=webhook_notifier(webhook.url),
        now=NOW + timedelta(minutes=minutes),
    )


def _events(webhook: Receiver) -> list[tuple[str, str]]:
    return [(m["event"], m["alert"]["dedup_key"]) for m in webhook.received]


def test_a_run_of_one_task_leaves_the_alerts_of_another_task_alone(
    deployment: Deployment, webhook: Receiver, settings: Settings, tmp_path: Path
) -> None:
    # Both tasks scheduled, as docs/maintenance-plan.md section 6 allows: icu-mortality's
    # lactate drift must stay one open incident, never resolved by readmission-30d's runs.
    session = deployment.session
    deployment.add_stays(150, at=NOW - timedelta(hours=1), lactate_factor=9.01)
    readmission = _readmission(deployment, tmp_path)
    readmission.add_stays(300, at=NOW - timedelta(hours=1))

    first = _run(session, settings, webhook, "icu-mortality")
    assert [a.dedup_key for a in first.reconciled.opened] == [DRIFT_KEY]
    for minutes in (15, 30):
        other = _run(session, settings, webhook, "readmission-30d", minutes)
        # The drift rule was judged (and found nothing) for readmission-30d ...
        assert {r.rule: r.status for r in other.results}["drift"] == "ok"
        # ... which says nothing about icu-mortality's inputs.
        assert other.reconciled.resolved == []
        again = _run(session, settings, webhook, "icu-mortality", minutes + 5)
        assert again.reconciled.opened == []

    alert = session.scalars(select(MonitorAlert)).one()
    assert (alert.state, alert.occurrences) == ("open", 3)
    assert _events(webhook) == [("opened", DRIFT_KEY)]
    events = session.scalars(select(AuditEvent.event)).all()
    assert "monitoring.alert.resolved" not in events


def test_a_task_independent_alert_is_resolved_by_any_tasks_run(
    deployment: Deployment, webhook: Receiver, settings: Settings, tmp_path: Path
) -> None:
    # Data freshness is about the wards, not a model: whichever task's run sees the feed
    # back resolves it.
    session = deployment.session
    _readmission(deployment, tmp_path)
    late = settings.stale_after_minutes + 30
    stay = deployment.add_open_stay(unit="SICU", observed_at=NOW - timedelta(minutes=late))

    first = _run(session, settings, webhook, "icu-mortality")
    assert [a.dedup_key for a in first.reconciled.opened] == ["data_stale:SICU"]
    deployment.add_lactate(stay, at=NOW + timedelta(minutes=10))
    other = _run(session, settings, webhook, "readmission-30d", 15)
    assert [a.dedup_key for a in other.reconciled.resolved] == ["data_stale:SICU"]
    assert _events(webhook) == [("opened", "data_stale:SICU"), ("resolved", "data_stale:SICU")]


def test_a_task_left_without_a_champion_raises_a_critical_alert_until_one_is_back(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    session = deployment.session
    deployment.add_stays(20, at=NOW - timedelta(hours=1))
    deployment.model.alias = "retired"  # demoted with no successor: serving answers 503
    session.flush()
    key = "no_champion:icu-mortality"

    first = _run(session, settings, webhook, "icu-mortality")
    statuses = {r.rule: r.status for r in first.results}
    assert statuses["no_champion"] == "firing"
    assert statuses["drift"] == statuses["calibration"] == "skipped"
    assert [(a.rule, a.dedup_key, a.severity) for a in first.reconciled.opened] == [
        ("no_champion", key, "critical")
    ]
    second = _run(session, settings, webhook, "icu-mortality", 15)
    assert second.reconciled.opened == []  # the same incident, seen again
    assert webhook.received[0]["alert"]["severity"] == "critical"
    assert "icu-mortality" in webhook.received[0]["alert"]["summary"]

    promote(session, version=deployment.model.version)  # a champion again
    third = _run(session, settings, webhook, "icu-mortality", 30)
    assert {r.rule: r.status for r in third.results}["no_champion"] == "ok"
    assert [a.dedup_key for a in third.reconciled.resolved] == [key]
    assert _events(webhook) == [("opened", key), ("resolved", key)]


def test_a_task_that_never_had_a_model_raises_no_champion_alert(
    db_session: Session, webhook: Receiver, settings: Settings
) -> None:
    # A deployment scheduling `monitor run` before its first model is trained: nothing is
    # being served for that task, so there is nothing to warn about.
    report = _run(db_session, settings, webhook, "readmission-30d")
    assert {r.rule: r.status for r in report.results}["no_champion"] == "skipped"
    assert report.reconciled.opened == []
    assert webhook.received == []


def test_a_champion_serving_would_refuse_raises_the_same_critical_alert(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    """A champion whose files fail verification (here its threshold edited in the
    sidecar) is refused by serving, which then answers 503 for the task: the same
    incident as no champion, which no other rule would notice."""
    session = deployment.session
    deployment.add_stays(20, at=NOW - timedelta(hours=1))
    key = "no_champion:icu-mortality"
    ok = _run(session, settings, webhook, "icu-mortality")
    assert {r.rule: r.status for r in ok.results}["no_champion"] == "ok"

    sidecar = Path(deployment.model.artifact_path).parent / "model.json"
    original = sidecar.read_bytes()
    sidecar.write_bytes(original.replace(b'"threshold": 0.', b'"threshold": 0.9'))
    refused = _run(session, settings, webhook, "icu-mortality", 15)
    (firing,) = [r for r in refused.results if r.rule == "no_champion"]
    assert firing.status == "firing"
    assert [(a.dedup_key, a.severity) for a in refused.reconciled.opened] == [(key, "critical")]
    assert "cannot be served" in webhook.received[0]["alert"]["summary"]
    assert "sha256" in firing.findings[0].details["reason"]

    sidecar.write_bytes(original)  # restored
    back = _run(session, settings, webhook, "icu-mortality", 30)
    assert [a.dedup_key for a in back.reconciled.resolved] == [key]
