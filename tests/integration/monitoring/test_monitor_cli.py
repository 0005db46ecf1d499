"""``vitalcast monitor ...`` end to end on PostgreSQL: the no-champion alert reaches the
webhook."""

from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner, Result
from sqlalchemy import select

from tests.integration.monitoring.conftest import Deployment, Receiver
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.monitoring.tables import MonitorAlert


def _invoke(settings: Settings, args: list[str]) -> Result:
    return CliRunner().invoke(main, args, obj={"settings": settings})


def test_monitor_run_sends_the_no_champion_alert_to_the_webhook(
    deployment: Deployment, webhook: Receiver, settings: Settings
) -> None:
    deployment.add_stays(5, at=deployment.model.created_at - timedelta(hours=1))
    deployment.model.alias = "retired"
    deployment.session.commit()
    configured = settings.model_copy(update={"alert_webhook_url": webhook.url})

    result = _invoke(configured, ["monitor", "run", "--fail-on-alert"])
    assert result.exit_code == 1, result.output  # a rule is firing
    assert "no_champion  firing" in result.stdout
    assert [(m["event"], m["alert"]["rule"], m["alert"]["severity"]) for m in webhook.received] == [
        ("opened", "no_champion", "critical")
    ]
    deployment.session.expire_all()
    alert = deployment.session.scalars(select(MonitorAlert)).one()
    assert (alert.dedup_key, alert.delivery) == ("no_champion:icu-mortality", "sent")
