"""Drift runs through the serving feature path, and alerts from rule to webhook and audit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from tests.integration.monitoring.conftest import NOW, Deployment, Receiver
from vitalcast.config import Settings
from vitalcast.monitoring.alerts import acknowledge_alert, webhook_notifier
from vitalcast.monitoring.jobs import run_monitor
from vitalcast.monitoring.service import SCORE_FEATURE, run_drift, store_gauges
from vitalcast.monitoring.tables import MonitorAlert
from vitalcast.security.audit import verify_chain
from vitalcast.security.tables import AuditEvent


def _by_feature(run: object) -> dict[str, object]:
    return {r.feature: r for r in run.results}  # type: ignore[attr-defined]


def test_same_distribution_is_not_flagged(deployment: Deployment) -> None:
    deployment.add_stays(200, at=NOW - timedelta(days=1))
    run = run_drift(deployment.session, task="icu-mortality", now=NOW)
    assert run.n_recent == 200
    assert run.severity == "none", [r.details["reasons"] for r in run.results]
    assert set(_by_feature(run)) == {"lactate_last_all", SCORE_FEATURE}


def test_lactate_in_mg_per_dl_is_flagged_through_the_feature_path(deployment: Deployment) -> None:
    # The features are recomputed from stored observations by features.stay_features,
    # the function serving uses: the x9.01 unit error reaches drift as it would in reality.
    deployment.add_stays(150, at=NOW - timedelta(hours=1), lactate_factor=9.01)
    run = run_drift(deployment.session, task="icu-mortality", now=NOW)
    results = _by_feature(run)
    assert results["lactate_last_all"].severity == "major"  # type: ignore[attr-defined]
    assert results[SCORE_FEATURE].severity == "none"  # type: ignore[attr-defined]
    assert run.flagged == 1
    gauges = store_gauges(deployment.session, now=NOW)
    assert {(g.feature, g.flagged) for g in gauges.drift} == {
        ("lactate_last_all", True),
        (SCORE_FEATURE, False),
    }


def test_lactate_no_longer_recorded_is_flagged(deployment: Deployment) -> None:
    encounters = deployment.add_stays(150, at=NOW - timedelta(days=1))
    from vitalcast.clinical.tables import Observation

    for enc in encounters:
        for obs in deployment.session.scalars(
            select(Observation).where(Observation.encounter_id == enc.id)
        ):
            deployment.session.delete(obs)
    deployment.session.flush()
    run = run_drift(deployment.session, task="icu-mortality", now=NOW)
    lactate = _by_feature(run)["lactate_last_all"]
    assert lactate.severity == "major"  # type: ignore[attr-defined]
    assert lactate.missing_rate_recent == 1.0  # type: ignore[attr-defined]


def test_alert_opens_once_is_delivered_audited_and_resolves(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    session = deployment.session
    notify = webhook_notifier(webhook.url)
    deployment.add_stays(150, at=NOW - timedelta(hours=1), lactate_factor=9.01)

    first = run_monitor(session, settings=settings, task="icu-mortality", notify=notify, now=NOW)
    assert [a.dedup_key for a in first.reconciled.opened] == [
        "drift:icu-mortality:lactate_last_all"
    ]
    later = NOW + timedelta(hours=1)
    second = run_monitor(session, settings=settings, task="icu-mortality", notify=notify, now=later)
    assert second.reconciled.opened == []  # deduplicated: same incident, seen again
    alert = session.scalars(select(MonitorAlert)).one()
    assert alert.occurrences == 2
    assert alert.last_seen_at == later
    assert alert.delivery == "sent"
    assert [m["event"] for m in webhook.received] == ["opened"]
    assert webhook.received[0]["alert"]["rule"] == "drift"

    acknowledge_alert(session, alert_id=alert.id, actor="dr-monitor")
    # A week later the lab is fixed: the new window is in mmol/L again.
    fixed = NOW + timedelta(days=8)
    deployment.add_stays(150, at=fixed - timedelta(hours=1))
    third = run_monitor(session, settings=settings, task="icu-mortality", notify=notify, now=fixed)
    assert [a.id for a in third.reconciled.resolved] == [alert.id]
    assert alert.state == "resolved"
    assert alert.open_key is None
    key = "drift:icu-mortality:lactate_last_all"
    assert [(m["event"], m["alert"]["dedup_key"]) for m in webhook.received] == [
        ("opened", key),
        ("resolved", key),
    ]

    events = [e.event for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert events.count("monitoring.alert.opened") == 1
    assert events.count("monitoring.alert.acknowledged") == 1
    assert events.count("monitoring.alert.resolved") == 1
    assert events.count("monitoring.drift.run") == 3
    session.commit()
    assert verify_chain(session).ok


def test_failed_delivery_is_recorded_and_retried(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    session = deployment.session
    deployment.add_stays(150, at=NOW - timedelta(hours=1), lactate_factor=9.01)
    webhook.status = 503
    run_monitor(
        session,
        settings=settings,
        task="icu-mortality",
        notify=webhook_notifier(webhook.url),
        now=NOW,
    )
    alert = session.scalars(select(MonitorAlert)).one()
    assert alert.delivery == "failed: HTTP 503"
    webhook.status = 200
    run_monitor(
        session,
        settings=settings,
        task="icu-mortality",
        notify=webhook_notifier(webhook.url),
        now=NOW + timedelta(minutes=10),
    )
    assert alert.delivery == "sent"
    assert len(webhook.received) == 2


def test_unreachable_webhook_does_not_lose_the_alert(
    deployment: Deployment, settings: Settings, tmp_path: Path
) -> None:
    deployment.add_stays(150, at=NOW - timedelta(hours=1), lactate_factor=9.01)
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    notify = webhook_notifier("http://127.0.0.1:9/hook", timeout_s=2)
    run_monitor(deployment.session, settings=settings, task="icu-mortality", notify=notify, now=NOW)
    alert = deployment.session.scalars(select(MonitorAlert)).one()
    assert alert.state == "open"
    assert alert.delivery is not None
    assert alert.delivery.startswith("failed: ConnectError")


def test_calibration_rule_uses_outcomes_joined_to_earlier_predictions(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    # Outcomes drawn from the scores themselves: calibrated, so no calibration alert;
    # the realised and CBPE figures are both recorded, the latter labelled an estimate.
    deployment.add_stays(400, at=NOW - timedelta(days=20), outcomes=True)
    report = run_monitor(
        deployment.session,
        settings=settings,
        task="icu-mortality",
        notify=webhook_notifier(webhook.url),
        now=NOW,
    )
    rules = {r.rule: r for r in report.results}
    assert rules["calibration"].status == "ok", rules["calibration"].note
    overall = report.run.results["performance"]["overall"]
    assert overall["kind"] == "realised"
    assert overall["n"] == 400
    assert report.run.results["estimate"]["kind"] == "estimate"
    assert "MICU" in report.run.results["performance"]["subgroups"]["unit"]
