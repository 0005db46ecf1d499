"""Permission changes through the CLI take effect at once and are audited."""

from __future__ import annotations

from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.state import get_state


def _run(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, list(args), obj={"settings": settings})
    assert result.exit_code == 0, result.output
    return result.output


def _events(app: Flask) -> list[str]:
    with get_state(app).sessions() as session:
        return list(session.scalars(select(AuditEvent.event).order_by(AuditEvent.id)))


def test_revoked_key_is_refused_at_once(app: Flask, settings: Settings, creds: Credentials) -> None:
    headers = creds.api_key("integration") | {"Accept": "application/json"}
    client = app.test_client()
    assert client.get("/api/v1/patients", headers=headers).status_code == 200
    prefix = headers["Authorization"].split("_")[1]
    _run(settings, "apikeys", "revoke", prefix)
    assert client.get("/api/v1/patients", headers=headers).status_code == 401
    assert "apikey.revoked" in _events(app)


def test_role_change_and_disable(app: Flask, settings: Settings, creds: Credentials) -> None:
    creds.user("dana", "data_scientist")
    client = app.test_client()
    creds.login(client, "dana")
    assert client.get("/api/v1/users", headers={"Accept": "application/json"}).status_code == 403
    _run(settings, "users", "set-role", "dana", "admin")
    # A role change ends the user's sessions: she signs in again, under the new role.
    assert client.get("/api/v1/users", headers={"Accept": "application/json"}).status_code == 401
    creds.login(client, "dana")
    assert client.get("/api/v1/users", headers={"Accept": "application/json"}).status_code == 200
    _run(settings, "users", "disable", "dana")
    assert client.get("/api/v1/users", headers={"Accept": "application/json"}).status_code == 401
    events = _events(app)
    assert events.index("user.role_changed") < events.index("user.disabled")
    result = CliRunner().invoke(main, ["users", "disable", "nobody"], obj={"settings": settings})
    assert result.exit_code == 1
    assert "no user nobody" in result.output
