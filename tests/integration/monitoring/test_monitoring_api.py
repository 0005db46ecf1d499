"""The monitoring read API: drift, the labelled performance figures and alerts."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Credentials
from vitalcast.db import session_scope
from vitalcast.modeling.tables import ModelVersion
from vitalcast.monitoring.performance import Performance as PerformanceFigures
from vitalcast.monitoring.performance import PerformanceEstimate
from vitalcast.monitoring.tables import DriftResult, DriftRun, MonitorAlert, MonitorRun
from vitalcast.serving.state import get_state

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _store_findings(app: Flask) -> None:
    """A champion with a drift run, a monitoring run, and alerts open and resolved."""
    with session_scope(get_state(app).sessions) as session:
        model = ModelVersion(
            version="v1",
            task="icu-mortality",
            artifact_path="/x",
            sha256="0" * 64,
            threshold=0.3,
            metrics={},
            alias="champion",
        )
        session.add(model)
        session.flush()
        run = DriftRun(
            model_version_id=model.id,
            task="icu-mortality",
            window_start=NOW,
            window_end=NOW,
            n_recent=90,
            severity="major",
            flagged=1,
        )
        run.results.append(
            DriftResult(
                feature="lactate_last_all",
                psi=8.0,
                ks_statistic=0.9,
                js_distance=0.8,
                missing_rate_reference=0.5,
                missing_rate_recent=0.5,
                severity="major",
                details={"psi": 8.0, "reasons": ["shift"]},
            )
        )
        session.add(run)
        session.add(
            MonitorRun(
                task="icu-mortality",
                started_at=NOW,
                firing=1,
                results={
                    "rules": {"drift": {"status": "firing"}},
                    "performance": {
                        "overall": PerformanceFigures(
                            n=120,
                            events=14,
                            threshold=0.3,
                            auroc=0.8,
                            observed_expected=1.1,
                            calibration_intercept=0.05,
                            calibration_slope=0.95,
                            sensitivity=0.5,
                            ppv=0.45,
                            flagged=15,
                        ).to_dict()
                    },
                    "estimate": PerformanceEstimate(
                        n=300,
                        threshold=0.3,
                        expected_events=40.2,
                        expected_auroc=0.79,
                        expected_precision=0.4,
                        expected_recall=0.6,
                        flagged=50,
                    ).to_dict(),
                },
            )
        )
        # Live alerts of this task, of another task, and one no task owns (stale data).
        for rule, key, summary in (
            ("drift", "drift:icu-mortality:lactate_last_all", "lactate"),
            ("drift", "drift:readmission-30d:number_inpatient", "another task's"),
            ("data_stale", "data_stale:SICU", "stale"),
        ):
            session.add(
                MonitorAlert(
                    rule=rule,
                    severity="critical",
                    state="open",
                    dedup_key=key,
                    open_key=key,
                    summary=summary,
                    details={},
                    first_seen_at=NOW,
                    last_seen_at=NOW,
                )
            )
        session.add(
            MonitorAlert(
                rule="drift",
                severity="warning",
                state="resolved",
                dedup_key="e",
                summary="old",
                details={},
                first_seen_at=NOW,
                last_seen_at=NOW,
                resolved_at=NOW,
            )
        )


def test_summary_and_alerts(app: Flask, client: FlaskClient, creds: Credentials) -> None:
    _store_findings(app)
    assert (
        client.get("/api/v1/monitoring/summary", headers=creds.api_key("nurse")).status_code == 403
    )
    key = creds.api_key("data_scientist")
    body = client.get("/api/v1/monitoring/summary", headers=key).get_json()
    assert body["drift"]["features"][0]["feature"] == "lactate_last_all"
    assert body["monitor_run"]["performance"]["overall"]["kind"] == "realised"
    assert body["monitor_run"]["estimate"]["kind"] == "estimate"
    # The summary is one task's: its own alerts and the shared ones, not another task's.
    assert sorted(a["summary"] for a in body["alerts"]) == ["lactate", "stale"]
    every = client.get("/api/v1/monitoring/alerts?all=1", headers=key).get_json()["items"]
    assert {a["state"] for a in every} == {"open", "resolved"}
    assert "another task's" in {a["summary"] for a in every}


def test_the_monitoring_page_shows_the_monitors_findings(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    """The page showed only score counts: drift, realised and estimated performance and
    the open alerts were served by the API alone, out of sight of its readers."""
    _store_findings(app)
    creds.login(client, creds.user("ds", "data_scientist"))
    page = client.get("/monitoring")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for shown in (
        "Open alerts",
        "lactate",
        "another task&#39;s",
        "stale",
        "Realised performance",
        "0.800",  # the realised AUROC
        "Estimated performance",
        "0.790",  # the CBPE estimate
        "Lactate, latest (this stay)",  # the drifted input, in words
        "shift",
    ):
        assert shown in html, shown
    assert "old" not in html.split("Open alerts", 1)[1].split("</section>", 1)[0]
