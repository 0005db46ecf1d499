"""The stream processes' ``/healthz`` and ``/metrics`` (monitoring/worker_http.py), served
over a real socket: a stalled loop answers 503, and ``/metrics`` demands the token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vitalcast.config import Settings, load_settings
from vitalcast.errors import ConfigError
from vitalcast.monitoring.metrics import observe_stream_rescore_failure
from vitalcast.monitoring.worker_http import (
    STALE_AFTER_S,
    Heartbeat,
    WorkerHttpServer,
    start_worker_http,
)

TOKEN = "scrape-token-for-tests-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return load_settings(env="test", data_dir=tmp_path, worker_http_port=0, **extra)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(tmp_path: Path, clock: Clock) -> Iterator[WorkerHttpServer]:
    endpoint = start_worker_http(
        _settings(tmp_path, metrics_token=TOKEN),
        Heartbeat(clock),
        details=lambda: {"broker_connected": True},
    )
    assert endpoint is not None
    yield endpoint
    endpoint.close()


def _url(endpoint: WorkerHttpServer, path: str) -> str:
    return f"http://127.0.0.1:{endpoint.port}{path}"


def test_healthz_answers_503_once_the_loop_stops_turning(
    served: WorkerHttpServer, clock: Clock
) -> None:
    ok = httpx.get(_url(served, "/healthz"))
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "loop_age_s": 0.0, "broker_connected": True}

    clock.now += STALE_AFTER_S + 1
    stalled = httpx.get(_url(served, "/healthz"))
    assert stalled.status_code == 503
    assert stalled.json()["status"] == "stalled"
    assert stalled.json()["loop_age_s"] == pytest.approx(STALE_AFTER_S + 1)


def test_metrics_demand_the_scrape_token(served: WorkerHttpServer) -> None:
    observe_stream_rescore_failure(source="worker-http-test", stays=3)
    assert httpx.get(_url(served, "/metrics")).status_code == 401
    wrong = httpx.get(_url(served, "/metrics"), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "Bearer" in wrong.headers["WWW-Authenticate"]
    assert TOKEN not in wrong.text

    good = httpx.get(_url(served, "/metrics"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    assert good.headers["Content-Type"].startswith("text/plain")
    # This process's own counter, with the value just counted.
    line = 'vitalcast_stream_rescore_failures_total{source="worker-http-test"} 3.0'
    assert line in good.text.splitlines()


def test_other_paths_and_methods_are_refused(served: WorkerHttpServer) -> None:
    assert httpx.get(_url(served, "/")).status_code == 404
    assert httpx.post(_url(served, "/healthz")).status_code == 405
    body = httpx.get(_url(served, "/api/v1/patients")).json()
    assert body == {"error": "no such path"}


def test_no_port_serves_nothing(tmp_path: Path) -> None:
    settings = load_settings(env="test", data_dir=tmp_path)
    assert settings.worker_http_port is None
    assert start_worker_http(settings, Heartbeat()) is None


def test_loopback_without_a_token_serves_metrics_openly(tmp_path: Path) -> None:
    endpoint = start_worker_http(_settings(tmp_path), Heartbeat())
    assert endpoint is not None
    try:
        response = httpx.get(_url(endpoint, "/metrics"))
        assert response.status_code == 200
        assert "# TYPE vitalcast_stream_rescore_failures_total counter" in response.text
        assert json.loads(httpx.get(_url(endpoint, "/healthz")).text)["status"] == "ok"
    finally:
        endpoint.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "worker.internal"])
def test_an_address_off_loopback_needs_the_metrics_token(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match=r"^VITALCAST_WORKER_HTTP_HOST is not a loopback"):
        start_worker_http(_settings(tmp_path, worker_http_host=host), Heartbeat())


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_an_address_off_loopback_serves_with_the_token(tmp_path: Path, host: str) -> None:
    settings = _settings(tmp_path, worker_http_host=host, metrics_token=TOKEN)
    endpoint = start_worker_http(settings, Heartbeat())
    assert endpoint is not None
    endpoint.close()


def test_healthz_follows_the_stalest_loop(tmp_path: Path) -> None:
    """``listen hl7`` depends on two loops (accepting connections, scoring): either one
    stuck fails the probe."""
    accepting, scoring = Clock(), Clock()
    endpoint = start_worker_http(_settings(tmp_path), Heartbeat(accepting), Heartbeat(scoring))
    assert endpoint is not None
    try:
        assert httpx.get(_url(endpoint, "/healthz")).status_code == 200
        scoring.now += STALE_AFTER_S + 5
        stalled = httpx.get(_url(endpoint, "/healthz"))
        assert stalled.status_code == 503
        assert stalled.json()["loop_age_s"] == pytest.approx(STALE_AFTER_S + 5)
    finally:
        endpoint.close()


def test_healthz_fails_on_a_named_problem_while_the_loops_turn(tmp_path: Path) -> None:
    """A consumer whose subscription the broker refused turns its loop and receives
    nothing: the probe must fail with the reason (and the restart then stops with it)."""
    problem: list[str] = []
    endpoint = start_worker_http(
        _settings(tmp_path), Heartbeat(), problem=lambda: problem[0] if problem else None
    )
    assert endpoint is not None
    try:
        assert httpx.get(_url(endpoint, "/healthz")).status_code == 200
        problem.append("subscription refused (Not authorized)")
        failing = httpx.get(_url(endpoint, "/healthz"))
        assert failing.status_code == 503
        assert failing.json()["status"] == "failing"
        assert failing.json()["problem"] == "subscription refused (Not authorized)"
    finally:
        endpoint.close()
