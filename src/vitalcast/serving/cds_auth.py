"""CDS Hooks request authentication: a JWT signed by the EHR, checked against its JWKS.

CDS Hooks 2.0 ("Trusting CDS Clients"): the EHR signs a short-lived JWT whose ``iss`` is
the EHR, ``aud`` the service URL, with ``exp``, ``iat`` and ``jti``; the service trusts
only issuers it was configured with and verifies the signature with the issuer's JWKS.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from vitalcast.errors import Unauthorized

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


def verify_cds_jwt(header: str | None, *, audience: str, trusted: dict[str, str]) -> dict[str, Any]:
    """Verify the bearer JWT of a CDS Hooks request; returns its claims.

    Raises:
        Unauthorized: missing, unsigned by a trusted issuer, expired, or for another audience.
    """
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("CDS Hooks requests need a JWT: Authorization: Bearer <jwt>")
    try:
        unverified = json.loads(_b64_segment(token.split(".")[1]))
    except (IndexError, ValueError):
        raise Unauthorized("the bearer token is not a JWT") from None
    if not isinstance(unverified, dict):
        # A JWT's payload is a JSON object (RFC 7519, 7.2); "[1]" or "5" reached .get().
        raise Unauthorized("the bearer token is not a JWT")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or issuer not in trusted:
        raise Unauthorized("the JWT issuer is not a trusted CDS client")
    try:
        decoded = jwt.decode(token, _load_jwks(trusted[issuer]), algorithms=_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            leeway=30,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
        claims = decoded.claims
    except (JoseError, ValueError) as exc:
        raise Unauthorized(f"the JWT was rejected: {exc}") from None
    except httpx.HTTPError:
        raise Unauthorized("the issuer's JWKS could not be fetched") from None
    return dict(claims)


def _b64_segment(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
