"""Browser sessions live on the server: a copied cookie dies with sign-out, disable, a
role or units change, idleness and age, whatever the client does to its cookie.

Every test signs in through the real form on the real app and PostgreSQL, and replays
the session cookie as an attacker who copied it would: in another client.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials, set_web_session, web_session, web_session_id
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.security.sessions import SESSION_KEY
from vitalcast.security.tables import User, WebSession
from vitalcast.serving.state import get_state

COOKIE = "vitalcast_session"
JSON = {"Accept": "application/json"}


def _copy(app: Flask, client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie."""
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie(COOKIE, cookie.value)
    return thief


def _refused(client: FlaskClient) -> bool:
    """Whether the session is refused: the page redirects to sign-in and the API says 401."""
    page = client.get("/ward")
    api = client.get("/api/v1/patients", headers=JSON)
    return (
        page.status_code == 302
        and page.headers["Location"].startswith("/login")
        and api.status_code == 401
    )


def _cli(settings: Settings, *args: str) -> None:
    result = CliRunner().invoke(main, list(args), obj={"settings": settings})
    assert result.exit_code == 0, result.output


def test_a_copied_cookie_is_refused_after_sign_out(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    token = creds.login(client, creds.user("carl", "clinician"))
    with client.session_transaction() as cookie:
        # The cookie names the session; who and since when are the server's to know.
        assert set(cookie) <= {SESSION_KEY, "csrf", "_flashes"}
        sid = cookie[SESSION_KEY]
    with get_state(app).sessions() as session:
        stored = session.scalars(select(WebSession.id)).all()
    assert stored == [web_session_id(client)]
    assert sid not in stored  # only a digest of the token is stored
    thief = _copy(app, client)
    assert thief.get("/api/v1/patients", headers=JSON).status_code == 200
    signed_out = client.post("/logout", data={"csrf_token": token})
    assert signed_out.status_code == 302
    assert _refused(thief)
    with get_state(app).sessions() as session:
        row = session.scalars(select(WebSession)).one()
    assert row.revoked_at is not None
    assert row.revoked_reason == "logout"


def test_a_disabled_user_is_refused_at_once_everywhere(
    app: Flask, settings: Settings, creds: Credentials
) -> None:
    creds.user("dora", "nurse")
    desk, ward_pc = app.test_client(), app.test_client()
    creds.login(desk, "dora")
    creds.login(ward_pc, "dora")
    thief = _copy(app, desk)
    _cli(settings, "users", "disable", "dora")
    assert _refused(desk)
    assert _refused(ward_pc)
    assert _refused(thief)
    with get_state(app).sessions() as session:
        reasons = session.scalars(select(WebSession.revoked_reason)).all()
    assert reasons == ["disabled", "disabled"]
    # Re-enabling the account does not bring the old sessions back.
    with session_scope(get_state(app).sessions) as session:
        user = session.scalars(select(User).where(User.username == "dora")).one()
        user.active = True
    assert _refused(thief)


def test_deactivation_on_the_admin_page_ends_the_users_sessions(
    app: Flask, creds: Credentials
) -> None:
    admin = app.test_client()
    token = creds.login(admin, creds.user("ada", "admin"))
    nurse = app.test_client()
    creds.login(nurse, creds.user("nina", "nurse"))
    with get_state(app).sessions() as session:
        nina = session.scalars(select(User.id).where(User.username == "nina")).one()
    done = admin.post(f"/admin/users/{nina}/active", data={"csrf_token": token, "active": "0"})
    assert done.status_code == 302
    assert _refused(nurse)
    assert admin.get("/api/v1/users", headers=JSON).status_code == 200  # only hers ended


def test_a_role_or_units_change_ends_the_users_sessions(
    app: Flask, settings: Settings, creds: Credentials
) -> None:
    creds.user("eve", "nurse", units=["MICU"])
    client = app.test_client()
    creds.login(client, "eve")
    _cli(settings, "users", "set-role", "eve", "nurse")  # no change: nothing ends
    assert client.get("/api/v1/patients", headers=JSON).status_code == 200
    _cli(settings, "users", "set-role", "eve", "clinician")
    assert _refused(client)
    creds.login(client, "eve")
    assert client.get("/api/v1/patients", headers=JSON).status_code == 200
    # Units have no command of their own yet; any code path that changes them ends the
    # sessions too, in the same transaction.
    with session_scope(get_state(app).sessions) as session:
        user = session.scalars(select(User).where(User.username == "eve")).one()
        user.units = ["MICU", "SICU"]
    assert _refused(client)
    with get_state(app).sessions() as session:
        reasons = session.scalars(
            select(WebSession.revoked_reason).order_by(WebSession.created_at)
        ).all()
    assert reasons == ["privileges_changed", "privileges_changed"]


def test_idle_timeout_is_the_servers_and_the_client_cannot_refresh_it(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    creds.login(client, creds.user("fay", "clinician"))
    idle = timedelta(minutes=get_state(app).settings.session_idle_minutes)
    now = datetime.now(UTC)
    # Within the idle time (activity is recorded to the minute): still signed in, and
    # the request is recorded as activity.
    set_web_session(client, last_seen_at=now - idle + timedelta(seconds=30))
    assert client.get("/api/v1/patients", headers=JSON).status_code == 200
    assert web_session(client).last_seen_at >= now
    # Requests within a minute of the last recorded one write nothing.
    recorded = web_session(client).last_seen_at
    assert client.get("/api/v1/patients", headers=JSON).status_code == 200
    assert web_session(client).last_seen_at == recorded
    # Idle past the limit: refused, even if the client writes a fresh time of its own
    # into its cookie (what the former, client-side session trusted).
    set_web_session(client, last_seen_at=now - idle - timedelta(minutes=2))
    thief = _copy(app, client)
    with client.session_transaction() as cookie:
        cookie["seen"] = time.time()
    assert _refused(client)
    assert _refused(thief)
    with get_state(app).sessions() as session:
        assert session.scalars(select(WebSession.revoked_reason)).one() == "idle"


def test_absolute_lifetime_ends_even_an_active_session(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    creds.login(client, creds.user("gus", "clinician"))
    max_age = timedelta(hours=get_state(app).settings.session_max_hours)
    assert max_age == timedelta(hours=12)  # the documented default
    now = datetime.now(UTC)
    set_web_session(client, created_at=now - max_age + timedelta(minutes=5), last_seen_at=now)
    assert client.get("/api/v1/patients", headers=JSON).status_code == 200
    set_web_session(client, created_at=now - max_age - timedelta(minutes=1), last_seen_at=now)
    assert _refused(client)
    with get_state(app).sessions() as session:
        assert session.scalars(select(WebSession.revoked_reason)).one() == "expired"
    # Signing in again starts a new session (and clears out the expired one).
    creds.login(client, "gus")
    with get_state(app).sessions() as session:
        assert session.scalars(select(WebSession.revoked_at)).all() == [None]


def test_a_cookie_of_the_former_client_side_kind_is_refused(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    creds.user("hal", "admin")
    with get_state(app).sessions() as session:
        hal = session.scalars(select(User.id).where(User.username == "hal")).one()
    with client.session_transaction() as cookie:  # signed with the app's own secret
        cookie["user_id"] = hal
        cookie["seen"] = time.time()
    assert _refused(client)
    with client.session_transaction() as cookie:
        assert "user_id" not in cookie
