"""``vitalcast monitor ...`` end to end on PostgreSQL: the no-champion alert reaches the
webhook, and out-of-range input ends in a clear answer, never an internal error."""

from __future__ import annotations

from datetime import timedelta

import pytest
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


def test_drift_window_beyond_the_maximum_is_a_usage_error(
    deployment: Deployment, settings: Settings
) -> None:
    deployment.session.commit()
    result = _invoke(settings, ["monitor", "drift", "--window-days", "100000000"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--window-days'" in result.stderr
    assert "3650" in result.stderr
    assert "internal error" not in result.output
    # The maximum itself is a window the database can hold.
    assert _invoke(settings, ["monitor", "drift", "--window-days", "3650"]).exit_code == 0


def test_drift_help_states_the_maximum(settings: Settings) -> None:
    result = _invoke(settings, ["monitor", "drift", "--help"])
    assert result.exit_code == 0
    assert "0.01<=x<=3650" in result.stdout


@pytest.mark.parametrize("alert_id", ["12345", "2147483648", "99999999999"])
def test_acknowledging_an_id_that_names_no_alert_says_so(settings: Settings, alert_id: str) -> None:
    # An id beyond the id column's range names no alert either: the same answer as an
    # unknown id, not a database error.
    result = _invoke(settings, ["monitor", "ack", alert_id, "--by", "x"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: no monitoring alert {alert_id}"


@pytest.mark.parametrize(
    ("option", "maximum"), [("--holdout-days", "3650"), ("--train-days", "36500")]
)
def test_retrain_periods_beyond_the_maximum_are_usage_errors(
    settings: Settings, option: str, maximum: str
) -> None:
    result = _invoke(settings, ["retrain", option, "100000000"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr
    assert maximum in result.stderr
