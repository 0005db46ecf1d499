"""Rate limits (memory and real Redis), JSON depth limits, proxy trust and HSTS."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from tests.services import redis_test_url
from vitalcast.config import Settings
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state


def _app(settings: Settings, **changes: object) -> Flask:
    return create_app(settings.model_copy(update=changes))


def _close(app: Flask) -> None:
    get_state(app).close()


@pytest.fixture
def limited(settings: Settings) -> Iterator[Flask]:
    app = _app(
        settings,
        rate_limit_per_caller="3/minute",
        rate_limit_per_address="5/minute",
        rate_limit_login="2/minute",
    )
    yield app
    _close(app)


def _addr() -> dict[str, str]:
    return {"REMOTE_ADDR": f"127.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"}


def test_per_key_limit_answers_429_in_the_canonical_shape(limited: Flask) -> None:
    creds = Credentials(limited)
    key_a, key_b = creds.api_key("clinician"), creds.api_key("clinician")
    client = limited.test_client()
    env = _addr()
    codes = [
        client.get("/api/v1/patients", headers=key_a, environ_base=env).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 200]
    over = client.get("/api/v1/patients", headers=key_a, environ_base=env)
    assert over.status_code == 429
    body = over.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["request_id"] == over.headers["X-Request-ID"] != ""
    assert int(over.headers["Retry-After"]) > 0
    # Another key from the same address has its own budget (until the address limit).
    assert client.get("/api/v1/patients", headers=key_b, environ_base=env).status_code == 200
    # Health checks are never limited (load balancers poll them).
    assert client.get("/healthz", environ_base=env).status_code == 200


def test_health_probes_are_not_counted(limited: Flask) -> None:
    """Load balancers poll /healthz and /readyz from one address: never a 429, and the
    address's budget is left whole for real requests."""
    client = limited.test_client()
    env = _addr()
    probes = [
        client.get(path, environ_base=env).status_code for path in ["/healthz", "/readyz"] * 4
    ]
    assert 429 not in probes
    codes = [client.get("/api/v1/patients", environ_base=env).status_code for _ in range(3)]
    assert codes == [401, 401, 401]


def test_per_address_limit_spans_keys_and_bad_credentials(limited: Flask) -> None:
    creds = Credentials(limited)
    client = limited.test_client()
    env = _addr()
    headers = [creds.api_key("nurse") for _ in range(3)]
    bad = {"Authorization": "Bearer vc_000000000000_guess"}
    codes = [
        client.get("/api/v1/patients", headers=h, environ_base=env).status_code for h in headers
    ]
    codes += [client.get("/api/v1/patients", headers=bad, environ_base=env).status_code] * 1
    codes += [
        client.get("/api/v1/patients", headers=bad | {"X-Try": "2"}, environ_base=env).status_code
    ]
    assert codes == [200, 200, 200, 401, 401]
    assert client.get("/api/v1/patients", headers=headers[0], environ_base=env).status_code == 429
    assert (
        client.get("/api/v1/patients", headers=headers[0], environ_base=_addr()).status_code == 200
    )


def test_sign_in_attempts_are_limited_per_address(limited: Flask) -> None:
    client = limited.test_client()
    env = _addr()
    page = client.get("/login", environ_base=env).get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    form = {"username": "nobody", "password": "wrong password!", "csrf_token": token}
    codes = [client.post("/login", data=form, environ_base=env).status_code for _ in range(3)]
    assert codes == [401, 401, 429]


@pytest.fixture
def redis_url() -> str:
    return redis_test_url()


def test_redis_storage_is_shared_by_workers(settings: Settings, redis_url: str) -> None:
    """Two app instances (two gunicorn workers) count against the same Redis budget."""
    import redis

    change = {"redis_url": redis_url, "rate_limit_per_caller": "4/minute"}
    one, two = _app(settings, **change), _app(settings, **change)
    try:
        headers = Credentials(one).api_key("integration")
        env = _addr()
        codes = [
            app.test_client().get("/api/v1/patients", headers=headers, environ_base=env).status_code
            for app in (one, two, one, two, two)
        ]
        assert codes == [200, 200, 200, 200, 429]
        prefix = headers["Authorization"].split("_")[1]
        stored = redis.Redis.from_url(redis_url).keys(f"*vitalcast*apikey:{prefix}*")
        assert stored, "no rate-limit counter in Redis"
    finally:
        _close(one)
        _close(two)


def test_an_unreachable_redis_does_not_take_the_api_down(settings: Settings) -> None:
    """With the rate-limit Redis down, every limited request answered 500. Each worker
    now counts in its memory until Redis answers again: requests are served and the
    limit still applies."""
    app = _app(settings, redis_url="redis://127.0.0.1:1/0", rate_limit_per_caller="3/minute")
    try:
        headers = Credentials(app).api_key("integration")
        env = _addr()
        codes = [
            app.test_client().get("/api/v1/patients", headers=headers, environ_base=env).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        # Readiness does not fail on it (that would pull every replica), but says so.
        ready = app.test_client().get("/readyz")
        body = ready.get_json()
        assert body["degraded"] == ["redis"]
        assert body["checks"]["redis"].startswith("unreachable (rate limits are counted")
        assert "127.0.0.1" not in ready.get_data(as_text=True)
    finally:
        _close(app)


def test_readiness_reports_a_reachable_redis(settings: Settings, redis_url: str) -> None:
    app = _app(settings, redis_url=redis_url)
    try:
        body = app.test_client().get("/readyz").get_json()
        assert body["checks"]["redis"] == "ok"
        assert "degraded" not in body
    finally:
        _close(app)


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_json_is_rejected_before_parsing(app: Flask, creds: Credentials, depth: int) -> None:
    client = app.test_client()
    response = client.post(
        "/api/v1/predict",
        data=_nested(depth),
        headers=creds.api_key("clinician") | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "JSON body nested deeper than 64 levels"


def test_shallow_json_passes_the_depth_check(app: Flask, creds: Credentials) -> None:
    response = app.test_client().post(
        "/api/v1/predict",
        data=b'{"x": [[["[[[[[[ not nesting, a string ]]]]]]"]]]}',
        headers=creds.api_key("clinician") | {"Content-Type": "application/json"},
    )
    assert response.status_code != 400 or "nested deeper" not in response.get_data(as_text=True)


def test_proxy_hops_give_client_address_and_hsts(settings: Settings) -> None:
    app = _app(settings, proxy_hops=1)
    try:
        client = app.test_client()
        headers = Credentials(app).api_key("admin") | {
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
        }
        response = client.get("/api/v1/users", headers=headers)
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        plain = client.get("/healthz")
        assert "Strict-Transport-Security" not in plain.headers
        with get_state(app).sessions() as session:
            addr = session.scalar(
                select(AuditEvent.client_addr).where(AuditEvent.event == "user.list")
            )
        assert addr == "203.0.113.7"
    finally:
        _close(app)


def test_without_proxy_hops_forwarded_headers_are_ignored(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    headers = creds.api_key("admin") | {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
    }
    response = client.get("/api/v1/users", headers=headers)
    assert "Strict-Transport-Security" not in response.headers
    with get_state(app).sessions() as session:
        addr = session.scalar(select(AuditEvent.client_addr).where(AuditEvent.event == "user.list"))
    assert addr == "127.0.0.1"
