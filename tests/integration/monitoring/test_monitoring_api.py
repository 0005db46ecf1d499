"""The monitoring read API: drift, the labelled performance figures and alerts."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Credentials
from vitalcast.db import session_scope
from vitalcast.modeling.tables import ModelVersion
from vitalcast.monitoring.tables import DriftResult, DriftRun, MonitorAlert, MonitorRun
from vitalcast.serving.state import get_state

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_summary_and_alerts(app: Flask, client: FlaskClient, creds: Credentials) -> None:
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
                    "performance": {"overall": {"kind": "realised", "auroc": 0.8}},
                    "estimate": {"kind": "estimate", "expected_auroc": 0.79},
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
