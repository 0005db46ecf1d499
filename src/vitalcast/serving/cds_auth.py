"""CDS Hooks request authentication: a JWT signed by the EHR, checked against its JWKS.

CDS Hooks ("Trusting CDS Clients"): the EHR signs a short-lived JWT whose ``iss`` is the
EHR, ``aud`` the service URL, with ``exp``, ``iat`` and ``jti`` (all REQUIRED); the service
trusts only issuers it was configured with and verifies the signature with the issuer's
JWKS. Beyond the signature:

- ``iat`` and ``exp`` are finite numbers; ``iat`` is not more than :data:`LEEWAY_S` in the
  future and ``exp`` not more than :data:`LEEWAY_S` in the past;
- the token is short-lived: ``exp - iat`` and ``exp - now`` are each at most
  :data:`MAX_LIFETIME_S` plus :data:`LEEWAY_S` (five minutes, as SMART Backend Services
  requires of its client assertions), so a leaked token is of use for minutes, not forever;
- ``jti`` is used once: :func:`remember_jti` records each accepted ``(iss, jti)`` in
  ``cds_jwt_uses`` until the token expires, and a second use is refused.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import ClaimError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vitalcast.errors import Unauthorized
from vitalcast.serving.tables import MAX_CDS_JTI_CHARS, CdsJwtUse

# Clock difference tolerated between the EHR and this server, in seconds.
LEEWAY_S = 60
# Longest a CDS client JWT may live (exp - iat, and exp - now), in seconds, leeway apart.
MAX_LIFETIME_S = 300
# Expired jti rows deleted at most per accepted token: the table stays small without
# one request paying for a backlog.
_PURGE_BATCH = 100

_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]
_JWKS_TTL_S = 300.0
_cache: dict[str, tuple[float, Any]] = {}


def _load_jwks(source: str) -> Any:
    cached = _cache.get(source)
    if cached and time.monotonic() - cached[0] < _JWKS_TTL_S:
        return cached[1]
    if source.startswith(("https://", "http://")):
        response = httpx.get(source, timeout=5.0)
        response.raise_for_status()
        data = response.json()
    else:
        data = json.loads(Path(source).read_text())
    key_set = KeySet.import_key_set(data)
    _cache[source] = (time.monotonic(), key_set)
    return key_set


def verify_cds_jwt(
    header: str | None, *, audience: str, trusted: dict[str, str], now: float | None = None
) -> dict[str, Any]:
    """Verify the bearer JWT of a CDS Hooks request; returns its claims.

    Does not check that the ``jti`` is unused: that is :func:`remember_jti`, which needs
    the database.

    Raises:
        Unauthorized: missing, unsigned by a trusted issuer, for another audience, without
            ``exp``, ``iat`` or ``jti``, issued in the future, expired, or living too long.
    """
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("CDS Hooks requests need a JWT: Authorization: Bearer <jwt>")
    try:
        unverified = json.loads(_b64_segment(token.split(".")[1]))
    except (IndexError, ValueError):
        raise Unauthorized("the bearer token is not a JWT") from None
    if not isinstance(unverified, dict):  # JSON, but not a claims object
        raise Unauthorized("the bearer token is not a JWT: its claims are not a JSON object")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or issuer not in trusted:
        raise Unauthorized("the JWT issuer is not a trusted CDS client")
    current = time.time() if now is None else now
    try:
        decoded = jwt.decode(token, _load_jwks(trusted[issuer]), algorithms=_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            now=int(current),
            leeway=LEEWAY_S,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
        claims = decoded.claims
    except ClaimError as exc:  # names the claim: "(iat): Missing claim: 'iat'"
        raise Unauthorized(f"the JWT was rejected ({exc.claim}): {exc.description}") from None
    except (JoseError, ValueError) as exc:
        raise Unauthorized(f"the JWT was rejected: {exc}") from None
    except httpx.HTTPError:
        raise Unauthorized("the issuer's JWKS could not be fetched") from None
    _check_lifetime(claims, current)
    jti = claims["jti"]
    if not 0 < len(jti) <= MAX_CDS_JTI_CHARS:
        raise Unauthorized(
            f"the JWT was rejected (jti): it must be 1 to {MAX_CDS_JTI_CHARS} characters"
        )
    return dict(claims)


def _check_lifetime(claims: dict[str, Any], now: float) -> None:
    """Refuse a token that lives longer than :data:`MAX_LIFETIME_S` (plus the leeway).

    The registry has checked both are numbers (not booleans); infinities and NaN (which
    Python's JSON reads from ``Infinity`` and ``NaN``) are refused here.
    """
    exp, iat = claims["exp"], claims["iat"]
    for name, value in (("exp", exp), ("iat", iat)):
        if not math.isfinite(value):
            raise Unauthorized(f"the JWT was rejected ({name}): not a finite NumericDate")
    longest = MAX_LIFETIME_S + LEEWAY_S
    if exp - iat > longest:
        raise Unauthorized(
            f"the JWT was rejected (exp): it lives longer than {MAX_LIFETIME_S} s (exp - iat)"
        )
    if exp - now > longest:
        raise Unauthorized(f"the JWT was rejected (exp): it is more than {MAX_LIFETIME_S} s ahead")


def remember_jti(session: Session, claims: dict[str, Any], now: datetime | None = None) -> None:
    """Record the accepted token's ``(iss, jti)``; refuse it if it was already used.

    The row is kept until the token's ``exp`` plus the leeway (after that the token is
    refused as expired anyway). The unique constraint on ``(issuer, jti)`` makes the
    insert the check, atomic across workers; a row past its time does not block a new
    token that happens to reuse the jti. Up to :data:`_PURGE_BATCH` expired rows are
    deleted on the way (rows another worker is deleting are skipped on PostgreSQL).

    Call it in a unit of work of its own, committed whatever the request then does: a
    token that reached a service has been used.

    Raises:
        Unauthorized: the token was already used.
    """
    current = now or datetime.now(UTC)
    issuer, jti = str(claims["iss"]), str(claims["jti"])
    expired = (
        select(CdsJwtUse.id)
        .where(CdsJwtUse.expires_at < current)
        .limit(_PURGE_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        delete(CdsJwtUse)
        .where(CdsJwtUse.id.in_(expired))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(CdsJwtUse)
        .where(CdsJwtUse.issuer == issuer, CdsJwtUse.jti == jti, CdsJwtUse.expires_at < current)
        .execution_options(synchronize_session=False)
    )
    until = datetime.fromtimestamp(float(claims["exp"]) + LEEWAY_S, UTC)
    session.add(CdsJwtUse(issuer=issuer, jti=jti, expires_at=until))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Unauthorized("the JWT was already used (jti)") from None


def _b64_segment(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
