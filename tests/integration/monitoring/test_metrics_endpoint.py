"""GET /metrics on the real app: access rules, and the exposition parsed as Prometheus would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.conftest import Credentials
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.modeling.tables import ModelVersion
from vitalcast.monitoring.metrics import observe_prediction
from vitalcast.monitoring.tables import DriftResult, DriftRun, MonitorAlert
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: FlaskClient, headers: dict[str, str]) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_needs_monitoring_permission(client: FlaskClient, creds: Credentials) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=creds.api_key("clinician")).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers=creds.api_key("data_scientist")).status_code == 200


def test_requests_errors_and_latency_are_counted_per_route(
    client: FlaskClient, creds: Credentials
) -> None:
    key = creds.api_key("admin")
    before = scrape(client, key)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/no-such-thing", headers=key).status_code == 404
    after = scrape(client, key)

    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    assert (
        value(after, "vitalcast_http_requests_total", **ok)
        - value(before, "vitalcast_http_requests_total", **ok)
        == 3
    )
    hist = {"route": "/healthz", "method": "GET"}
    assert (
        value(after, "vitalcast_http_request_duration_seconds_count", **hist)
        - value(before, "vitalcast_http_request_duration_seconds_count", **hist)
        == 3
    )
    inf = value(after, "vitalcast_http_request_duration_seconds_bucket", le="+Inf", **hist)
    assert inf == value(after, "vitalcast_http_request_duration_seconds_count", **hist)
    miss = {"route": "<unmatched>", "status": "404"}
    assert (
        value(after, "vitalcast_http_errors_total", **miss)
        - value(before, "vitalcast_http_errors_total", **miss)
        == 1
    )
    # Route templates only: no concrete path (which could carry an identifier) is a label.
    assert not any("no-such-thing" in str(labels) for _, labels in after)


def test_prediction_counter_and_database_gauges(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    key = creds.api_key("data_scientist")
    before = scrape(client, key)
    observe_prediction(model_version="v-test", band="high")
    with session_scope(get_state(app).sessions) as session:
        model = ModelVersion(
            version="v-test",
            task="icu-mortality",
            artifact_path="/nonexistent",
            sha256="0" * 64,
            threshold=0.3,
            metrics={},
            alias="champion",
        )
        session.add(model)
        session.flush()
        now = datetime.now(UTC)
        run = DriftRun(
            model_version_id=model.id,
            task="icu-mortality",
            window_start=now,
            window_end=now,
            n_recent=120,
            severity="major",
            flagged=1,
        )
        run.results.append(
            DriftResult(
                feature="lactate_last_all",
                psi=8.2,
                ks_statistic=0.9,
                js_distance=0.8,
                missing_rate_reference=0.5,
                missing_rate_recent=0.5,
                severity="major",
                details={},
            )
        )
        session.add(run)
        session.add(
            MonitorAlert(
                rule="drift",
                severity="critical",
                state="open",
                dedup_key="drift:x",
                open_key="drift:x",
                summary="s",
                details={},
                first_seen_at=now,
                last_seen_at=now,
            )
        )
    after = scrape(client, key)
    labels = {"model_version": "v-test", "band": "high", "role": "champion"}
    assert (
        value(after, "vitalcast_predictions_total", **labels)
        - value(before, "vitalcast_predictions_total", **labels)
        == 1
    )
    drift = {"model_version": "v-test", "feature": "lactate_last_all"}
    assert value(after, "vitalcast_drift_psi", **drift) == pytest.approx(8.2)
    assert value(after, "vitalcast_drift_flagged", **drift) == 1
    assert value(after, "vitalcast_alerts_open", rule="drift", severity="critical") == 1


@pytest.fixture
def token_app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr("scrape-secret-1")}))
    yield app
    get_state(app).close()


def test_scrape_token_opens_metrics_and_nothing_else(token_app: Flask) -> None:
    client = token_app.test_client()
    good = {"Authorization": "Bearer scrape-secret-1"}
    assert client.get("/metrics", headers=good).status_code == 200
    assert (
        client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-2"}).status_code
        == 401
    )
    # The token is not an API key: it opens /metrics only.
    assert client.get("/api/v1/patients", headers=good).status_code == 401
