"""Access control: every route declares a permission, and each role gets exactly the matrix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials, set_web_session
from vitalcast.security.permissions import PUBLIC, ROLES, declared_permission, role_allows
from vitalcast.security.tables import AuditEvent, User
from vitalcast.serving.guard import check_routes_declared
from vitalcast.serving.state import get_state


def _routes(app: Flask) -> list[tuple[str, str, object]]:
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<{arg}>", "x").replace(f"<path:{arg}>", "x")
            url = url.replace(f"<int:{arg}>", "1")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, url, declared_permission(view)))
    return routes


def test_a_route_without_permission_stops_startup(app: Flask) -> None:
    app.add_url_rule("/undeclared", "undeclared", lambda: "x")
    with pytest.raises(RuntimeError, match="/undeclared"):
        check_routes_declared(app)


def test_every_protected_route_needs_credentials(app: Flask, client: FlaskClient) -> None:
    protected = [(m, u) for m, u, p in _routes(app) if p != PUBLIC]
    assert protected, "no protected routes found"
    for method, url in protected:
        response = client.open(url, method=method, headers={"Accept": "application/json"})
        assert response.status_code == 401, (method, url, response.status_code)
    public = {u for _, u, p in _routes(app) if p == PUBLIC}
    assert {"/healthz", "/readyz", "/login"} <= public


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_the_matrix(
    app: Flask, client: FlaskClient, creds: Credentials, role: str
) -> None:
    headers = creds.api_key(role) | {"Accept": "application/json"}
    for method, url, permission in _routes(app):
        if permission == PUBLIC:
            continue
        response = client.open(url, method=method, headers=headers)
        allowed = role_allows(role, permission)  # type: ignore[arg-type]
        assert (response.status_code != 403) == allowed, (role, method, url, response.status_code)


def test_denials_are_audited(app: Flask, client: FlaskClient, creds: Credentials) -> None:
    response = client.get("/api/v1/users", headers=creds.api_key("clinician"))
    assert response.status_code == 403
    assert "users:manage" in response.get_json()["error"]["message"]
    with get_state(app).sessions() as session:
        denied = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "access.denied")
        ).one()
    assert (denied.role, denied.outcome, denied.resource) == (
        "clinician",
        "denied",
        "/api/v1/users",
    )


def test_sign_in_lockout_and_audit(app: Flask, client: FlaskClient, creds: Credentials) -> None:
    creds.user("nina", "nurse")
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    for _ in range(5):
        bad = client.post(
            "/login", data={"username": "nina", "password": "wrong password!", "csrf_token": token}
        )
        assert bad.status_code == 401
    locked = client.post(
        "/login", data={"username": "nina", "password": creds.PASSWORD, "csrf_token": token}
    )
    assert locked.status_code == 401
    assert "locked" in locked.get_data(as_text=True)
    with get_state(app).sessions() as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.event == "user.login")
        ).all()
        assert outcomes.count("failure") == 6
        assert session.scalar(select(User.locked_until).where(User.username == "nina"))


def test_csrf_and_idle_timeout(app: Flask, client: FlaskClient, creds: Credentials) -> None:
    creds.user("carl", "clinician")
    token = creds.login(client, "carl")
    assert client.post("/logout").status_code == 403  # no CSRF token
    # Idle longer than the 15-minute default (plus the minute activity is rounded to),
    # by the server's clock: the cookie holds no time a client could rewind.
    set_web_session(client, last_seen_at=datetime.now(UTC) - timedelta(minutes=17))
    response = client.get("/ward")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
    assert token


def test_login_form_requires_csrf(client: FlaskClient, creds: Credentials) -> None:
    creds.user("dora", "clinician")
    response = client.post("/login", data={"username": "dora", "password": creds.PASSWORD})
    assert response.status_code == 403
    # A token that is not ASCII is a wrong token (403), not an internal error.
    client.get("/login")
    sent = {"username": "dora", "password": creds.PASSWORD, "csrf_token": "jeton-é"}
    assert client.post("/login", data=sent).status_code == 403


def test_a_csrf_header_that_is_not_ascii_is_a_403(client: FlaskClient, creds: Credentials) -> None:
    creds.user("edda", "clinician")
    creds.login(client, "edda")
    response = client.post("/logout", headers={"X-CSRF-Token": "jeton-\u00e9"})
    assert response.status_code == 403
    assert "CSRF" in response.get_data(as_text=True)


def test_sign_in_is_audited_as_the_user_who_signed_in(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    """A successful sign-in names the user as its actor; a failed one stays anonymous,
    with the attempted username, and no password is ever recorded."""
    creds.user("olga", "nurse", units=["MICU"])
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    wrong = "not her password"
    failed = client.post(
        "/login", data={"username": "olga", "password": wrong, "csrf_token": token}
    )
    assert failed.status_code == 401
    creds.login(client, "olga")
    with get_state(app).sessions() as session:
        logins = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "user.login").order_by(AuditEvent.id)
        ).all()
    assert [(e.outcome, e.actor, e.role) for e in logins] == [
        ("failure", "anonymous", None),
        ("success", "user:olga", "nurse"),
    ]
    assert logins[0].details["username"] == "olga"
    for event in logins:
        recorded = str(event.details)
        assert wrong not in recorded
        assert creds.PASSWORD not in recorded

    # A password typed into the username field names no account: the trail keeps a keyed
    # pseudonym of it, never the text (before: the password, in an append-only log).
    stranger = app.test_client()
    page = stranger.get("/login").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    for _ in range(2):
        sent = {"username": wrong, "password": "x", "csrf_token": token}
        assert stranger.post("/login", data=sent).status_code == 401
    with get_state(app).sessions() as session:
        unknown = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.event == "user.login", AuditEvent.outcome == "failure")
            .order_by(AuditEvent.id)
        ).all()[1:]
    assert len(unknown) == 2
    assert all(wrong not in str(e.details) for e in unknown)
    assert [e.details["reason"] for e in unknown] == ["unknown", "unknown"]
    pseudonym = get_state(app).cipher.pseudonym("sign-in", wrong)
    assert [e.details["username_pseudonym"] for e in unknown] == [pseudonym, pseudonym]
