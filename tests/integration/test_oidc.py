"""Single sign-on against a real OpenID Provider running on 127.0.0.1 (signed tokens)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import RSAKey
from pydantic import SecretStr
from sqlalchemy import select

from tests.oidc_provider import OidcProvider, running_provider
from vitalcast.config import Settings
from vitalcast.security.tables import AuditEvent, User
from vitalcast.serving.app import create_app
from vitalcast.serving.state import get_state


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with running_provider() as p:
        yield p


@pytest.fixture
def sso_app(settings: Settings, provider: OidcProvider) -> Iterator[Flask]:
    app = create_app(
        settings.model_copy(
            update={
                "oidc_issuer": provider.issuer,
                "oidc_client_id": provider.client_id,
                "oidc_client_secret": SecretStr(provider.client_secret),
                "oidc_role_claim": "groups",
                "oidc_role_map": {"icu-doctors": "clinician", "icu-nurses": "nurse"},
            }
        )
    )
    yield app
    get_state(app).close()


def _sign_in(client: FlaskClient, next_url: str = "/ward") -> int:
    """Walk the browser's redirects: app -> provider -> app callback; the callback status."""
    start = client.get(f"/login/oidc?next={next_url}")
    assert start.status_code == 302
    at_provider = httpx.get(start.headers["Location"], follow_redirects=False, timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    back = httpx.URL(at_provider.headers["Location"])
    assert back.path == "/login/oidc/callback"
    done = client.get(f"{back.path}?{back.query.decode()}", headers={"Accept": "application/json"})
    if done.status_code == 302:
        assert done.headers["Location"] == next_url
    return done.status_code


def _events(app: Flask, name: str) -> list[AuditEvent]:
    with get_state(app).sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == name)))


def test_sign_in_creates_the_user_with_the_mapped_role(
    sso_app: Flask, provider: OidcProvider
) -> None:
    provider.user = {"sub": "248289761001", "groups": ["icu-nurses", "all-staff"]}
    client = sso_app.test_client()
    assert _sign_in(client) == 302
    assert client.get("/ward").status_code == 200
    with get_state(sso_app).sessions() as session:
        user = session.scalars(select(User).where(User.username == "oidc:248289761001")).one()
    assert user.role == "nurse"
    logins = _events(sso_app, "user.login")
    assert [(e.outcome, (e.details or {}).get("method")) for e in logins] == [("success", "oidc")]
    assert (logins[0].actor, logins[0].role) == ("user:oidc:248289761001", "nurse")
    assert len(_events(sso_app, "user.created")) == 1


def test_a_changed_role_at_the_provider_is_applied_and_audited(
    sso_app: Flask, provider: OidcProvider
) -> None:
    provider.user = {"sub": "u-2", "groups": "icu-nurses"}
    as_nurse = sso_app.test_client()
    assert _sign_in(as_nurse) == 302
    assert as_nurse.get("/ward").status_code == 200
    provider.user = {"sub": "u-2", "groups": "icu-doctors"}
    as_doctor = sso_app.test_client()
    assert _sign_in(as_doctor) == 302
    changed = _events(sso_app, "user.role_changed")
    assert [(e.details or {}).get("to") for e in changed] == ["clinician"]
    # The session opened under the former role ends; the new sign-in's session works.
    assert as_nurse.get("/ward", headers={"Accept": "application/json"}).status_code == 401
    assert as_doctor.get("/ward").status_code == 200


def test_a_subject_the_database_cannot_hold_signs_in_under_its_digest(
    sso_app: Flask, provider: OidcProvider
) -> None:
    """The IdP's ``sub`` became the username as it was: one with a NUL character failed
    in the database (a 500 at the end of sign-in)."""
    provider.user = {"sub": "u\x00-3", "groups": ["icu-doctors"]}
    client = sso_app.test_client()
    assert _sign_in(client) == 302
    assert client.get("/ward").status_code == 200
    with get_state(sso_app).sessions() as session:
        (name,) = session.scalars(select(User.username)).all()
    assert re.fullmatch(r"oidc:[0-9a-f]{32}", name), name


@pytest.mark.parametrize("misbehaviour", ["foreign_key", "other_audience", "stale_nonce"])
def test_forged_or_misdirected_tokens_are_refused(
    sso_app: Flask, provider: OidcProvider, misbehaviour: str
) -> None:
    provider.user = {"sub": "mallory", "groups": ["icu-doctors"]}
    if misbehaviour == "foreign_key":
        provider.signing_key = RSAKey.generate_key(2048, {"kid": "k1"})  # same kid, other key
    elif misbehaviour == "other_audience":
        provider.audience = "some-other-app"
    else:
        provider.nonce = "replayed-nonce"
    client = sso_app.test_client()
    assert _sign_in(client) == 401
    assert client.get("/ward", headers={"Accept": "application/json"}).status_code == 401
    failures = [e for e in _events(sso_app, "user.login") if e.outcome == "failure"]
    assert len(failures) == 1
    with get_state(sso_app).sessions() as session:
        assert session.scalar(select(User).where(User.username == "oidc:mallory")) is None


def test_no_or_several_roles_are_refused(sso_app: Flask, provider: OidcProvider) -> None:
    provider.user = {"sub": "x", "groups": ["all-staff"]}
    assert _sign_in(sso_app.test_client()) == 403
    provider.user = {"sub": "y", "groups": ["icu-doctors", "icu-nurses"]}
    assert _sign_in(sso_app.test_client()) == 403


def test_forged_state_is_refused_before_any_token_request(
    sso_app: Flask, provider: OidcProvider
) -> None:
    client = sso_app.test_client()
    client.get("/login/oidc")
    response = client.get(
        "/login/oidc/callback?code=abc&state=forged", headers={"Accept": "application/json"}
    )
    assert response.status_code == 401
    # A state that is not ASCII is as forged: a 401, not an internal error.
    client.get("/login/oidc")
    response = client.get(
        "/login/oidc/callback?code=abc&state=%C3%A9t%C3%A9", headers={"Accept": "application/json"}
    )
    assert response.status_code == 401
    assert provider.token_requests == 0


def test_sso_routes_are_404_when_not_configured(client: FlaskClient) -> None:
    response = client.get("/login/oidc", headers={"Accept": "application/json"})
    assert response.status_code == 404
    assert "not configured" in response.get_json()["error"]["message"]


def test_the_sign_in_page_offers_sso_only_when_configured(
    sso_app: Flask, provider: OidcProvider, client: FlaskClient
) -> None:
    """Without a link a user had to know /login/oidc by heart; the link keeps the page
    that was asked for, and signing in through it lands there."""
    page = sso_app.test_client().get("/login?next=/models").get_data(as_text=True)
    link = re.search(r'href="(/login/oidc[^"]*)"', page)
    assert link is not None
    assert html.unescape(link.group(1)) == "/login/oidc?next=/models"
    provider.user = {"sub": "31", "groups": ["icu-doctors"]}
    assert _sign_in(sso_app.test_client(), "/models") == 302
    assert "/login/oidc" not in client.get("/login").get_data(as_text=True)
