"""Optional single sign-on with OpenID Connect (authorization code flow with PKCE).

Set ``VITALCAST_OIDC_ISSUER``, ``_CLIENT_ID`` and ``_CLIENT_SECRET`` and register
``<public url>/login/oidc/callback`` at the identity provider; the sign-in page then
offers ``/login/oidc``. Authlib builds the RFC 6749 authorization and token requests and
the RFC 7636 PKCE challenge; the ID token is verified with joserfc against the
provider's published JWKS: signature (asymmetric algorithms only), ``iss``, ``aud``
(and ``azp`` with several audiences), ``exp``, ``iat`` and the ``nonce`` bound to this
browser session (OpenID Connect Core 1.0, 3.1.3.7).

The user's vitalcast role comes from one ID-token claim (``VITALCAST_OIDC_ROLE_CLAIM``)
through ``VITALCAST_OIDC_ROLE_MAP``; the identity provider stays the source of truth, so
a changed role is applied (and audited) at the next sign-in. SSO accounts live under
``oidc:<sub>`` and never collide with local password accounts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Blueprint, Flask, Response, redirect, request, session, url_for
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select

from vitalcast.config import Settings
from vitalcast.errors import AppError, Forbidden, NotFound, Unauthorized
from vitalcast.security.passwords import hash_password
from vitalcast.security.permissions import ROLES, public
from vitalcast.security.redirects import safe_next
from vitalcast.security.service import MAX_USERNAME_CHARS, SSO_USERNAME_PREFIX
from vitalcast.security.tables import User
from vitalcast.serving.context import audit_event, db
from vitalcast.serving.guard import start_session
from vitalcast.serving.state import get_state
from vitalcast.text_input import unstorable

logger = logging.getLogger(__name__)

oidc = Blueprint("oidc", __name__)

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
_HTTP_TIMEOUT_S = 10.0
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class SsoUnavailable(AppError):
    status = 503
    code = "sso_unavailable"


@dataclass(frozen=True)
class Provider:
    """The parts of an OpenID Provider's discovery document vitalcast uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


def _configured() -> Settings:
    settings = get_state().settings
    if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret):
        raise NotFound("single sign-on is not configured on this server")
    return settings


def _get_json(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=_HTTP_TIMEOUT_S, headers={"Accept": "application/json"})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("identity provider unreachable", extra={"error": type(exc).__name__})
        raise SsoUnavailable(
            "the identity provider is unreachable; try again or sign in with a password"
        ) from exc
    return data


def discover(issuer: str) -> Provider:
    """Read and check the provider's discovery document (OpenID Connect Discovery 1.0).

    Raises:
        SsoUnavailable: unreachable, or a document for another issuer (4.3 requires the
            ``issuer`` value to equal the configured one exactly).
    """
    doc = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if doc.get("issuer") != issuer:
        raise SsoUnavailable("the identity provider's discovery document names another issuer")
    offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(a for a in offered if a in ASYMMETRIC_ALGORITHMS)
    try:
        return Provider(
            issuer=issuer,
            authorization_endpoint=str(doc["authorization_endpoint"]),
            token_endpoint=str(doc["token_endpoint"]),
            jwks_uri=str(doc["jwks_uri"]),
            algorithms=algorithms or ("RS256",),
        )
    except KeyError as exc:
        raise SsoUnavailable(f"the discovery document lacks {exc.args[0]}") from None


def verify_id_token(
    id_token: str, provider: Provider, *, client_id: str, nonce: str
) -> dict[str, Any]:
    """Verified claims of an ID token.

    Raises:
        Unauthorized: bad signature, algorithm, issuer, audience, time or nonce.
    """
    keys = KeySet.import_key_set(_get_json(provider.jwks_uri))  # type: ignore[arg-type]
    try:
        token = jwt.decode(id_token, keys, algorithms=list(provider.algorithms))
        claims: dict[str, Any] = dict(token.claims)
        jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        ).validate(claims)
    except (JoseError, ValueError) as exc:
        raise Unauthorized(f"the identity provider's ID token was rejected ({exc})") from None
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise Unauthorized("the ID token was issued to another client (azp)")
    return claims


def role_from_claims(claims: dict[str, Any], settings: Settings) -> str:
    """The one vitalcast role the claim maps to.

    Raises:
        Forbidden: no role, or several (ambiguous privileges are refused, not guessed).
    """
    raw = claims.get(settings.oidc_role_claim, [])
    values = [raw] if isinstance(raw, str) else [str(v) for v in raw or []]
    mapping = settings.oidc_role_map
    mapped = (mapping.get(v) if mapping else v for v in values)
    roles = {r for r in mapped if r in ROLES}
    if len(roles) != 1:
        why = "no vitalcast role" if not roles else f"several roles ({', '.join(sorted(roles))})"
        raise Forbidden(
            f"your identity-provider account maps to {why}; ask an administrator to"
            f" grant exactly one through the {settings.oidc_role_claim!r} claim"
        )
    return roles.pop()


def _username(sub: str) -> str:
    """The account name of the IdP's subject: the subject itself when it fits the column
    and can be stored (no NUL, no lone surrogate), else a digest of it."""
    if len(sub) <= MAX_USERNAME_CHARS - len(SSO_USERNAME_PREFIX) and not unstorable(sub):
        return SSO_USERNAME_PREFIX + sub
    digest = hashlib.sha256(sub.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return SSO_USERNAME_PREFIX + digest


def _provision(claims: dict[str, Any], role: str) -> User:
    session_db = db()
    username = _username(str(claims["sub"]))
    user = session_db.scalar(select(User).where(User.username == username))
    if user is None:
        # The random password is never shown: SSO accounts sign in only through the IdP.
        user = User(
            username=username, password_hash=hash_password(secrets.token_urlsafe(32)), role=role
        )
        session_db.add(user)
        session_db.flush()
        audit_event(
            "user.created",
            "C",
            resource=f"User/{user.id}",
            details={"username": username, "role": role, "method": "oidc"},
        )
    elif not user.active:
        raise Unauthorized("this account is disabled")
    elif user.role != role:
        audit_event(
            "user.role_changed",
            "U",
            resource=f"User/{user.id}",
            details={
                "username": username,
                "from": user.role,
                "to": role,
                "by": "identity provider",
            },
        )
        user.role = role
    return user


def _redirect_uri(settings: Settings) -> str:
    base = (settings.public_url or request.host_url).rstrip("/")
    return base + url_for("oidc.callback")


def _safe_next(target: str | None) -> str:
    """The page to return to after sign-in (one rule with the password form's)."""
    return safe_next(target) or url_for("web.ward")


@oidc.get("/login/oidc")
@public
def start() -> Response:
    """Send the browser to the identity provider."""
    settings = _configured()
    assert settings.oidc_issuer is not None
    provider = discover(settings.oidc_issuer)
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    session["oidc"] = {
        "state": state,
        "nonce": nonce,
        "verifier": verifier,
        "next": _safe_next(request.args.get("next")),
    }
    uri = prepare_grant_uri(
        provider.authorization_endpoint,
        settings.oidc_client_id,
        "code",
        redirect_uri=_redirect_uri(settings),
        scope="openid profile email",
        state=state,
        nonce=nonce,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
    )
    return redirect(uri)  # type: ignore[return-value]


@oidc.get("/login/oidc/callback")
@public
def callback() -> Response:
    """Finish sign-in: exchange the code, verify the ID token, open the session."""
    settings = _configured()
    try:
        return _finish(settings)
    except (Unauthorized, Forbidden) as error:
        audit_event(
            "user.login", "E", outcome="failure", details={"method": "oidc", "reason": error.code}
        )
        db().commit()  # the failed attempt is audited even though we answer 401/403
        raise


def _finish(settings: Settings) -> Response:
    assert settings.oidc_issuer
    assert settings.oidc_client_id
    assert settings.oidc_client_secret
    pending = session.pop("oidc", None)
    sent = request.args.get("state", "").encode()  # bytes: a str must be ASCII here
    if not pending or not hmac.compare_digest(sent, str(pending["state"]).encode()):
        raise Unauthorized("the sign-in attempt expired or was not started here; start again")
    error = request.args.get("error")
    if error:
        shown = error if _ERROR_CODE.match(error) else "invalid_response"
        raise Unauthorized(f"the identity provider refused the sign-in ({shown})")
    code = request.args.get("code")
    if not code:
        raise Unauthorized("the identity provider sent no authorization code")
    provider = discover(settings.oidc_issuer)
    body = prepare_token_request(
        "authorization_code",
        code=code,
        redirect_uri=_redirect_uri(settings),
        code_verifier=pending["verifier"],
    )
    try:
        response = httpx.post(
            provider.token_endpoint,
            content=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            auth=(settings.oidc_client_id, settings.oidc_client_secret.get_secret_value()),
            timeout=_HTTP_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise SsoUnavailable("the identity provider's token endpoint is unreachable") from exc
    if response.status_code != 200:
        raise Unauthorized(f"the identity provider refused the code (HTTP {response.status_code})")
    id_token = response.json().get("id_token")
    if not isinstance(id_token, str):
        raise Unauthorized("the identity provider returned no ID token")
    claims = verify_id_token(
        id_token, provider, client_id=settings.oidc_client_id, nonce=pending["nonce"]
    )
    user = _provision(claims, role_from_claims(claims, settings))
    start_session(user, method="oidc")
    return redirect(pending["next"])  # type: ignore[return-value]


def register_oidc(app: Flask) -> None:
    """Add the SSO routes (they answer 404 while no issuer is configured)."""
    app.register_blueprint(oidc)
