"""HTTP hardening: trusted proxies, rate limits, JSON depth limits.

Installed by ``register_hardening(app)`` in ``create_app``, after the guard:

* Behind a load balancer the client address and scheme come from X-Forwarded-* headers,
  trusted for exactly ``VITALCAST_PROXY_HOPS`` hops (werkzeug ProxyFix). Without it every
  client would share the balancer's address (one rate limit for all) and HSTS would never
  be sent.
* Rate limits (flask-limiter): per caller (API key prefix, else the signed-in user, else
  the address) and per client address across all routes, plus a tight limit on sign-in
  attempts per address (brute force; account lock-out is the second layer). Counters live
  in Redis when ``VITALCAST_REDIS_URL`` is set, so that every worker and replica shares
  them; otherwise in process memory, where each of the ``workers`` processes serving the
  app enforces its share of every limit (``security/rate_limits.py``), so that the whole
  server still allows no more than configured. A breach answers 429 in the canonical
  error shape.
* JSON bodies nested deeper than ``VITALCAST_MAX_JSON_DEPTH`` get 400 before any parser
  sees them: Python's json module recurses per level and a body of a few kilobytes of
  ``[`` would otherwise end in RecursionError (a 500) or worse in validators.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, g, request, session
from flask_limiter import ApplicationLimit, Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from vitalcast.errors import BadRequest
from vitalcast.security.rate_limits import effective_limits
from vitalcast.security.sessions import SESSION_KEY, token_digest
from vitalcast.serving.context import new_request_id
from vitalcast.serving.state import get_state

logger = logging.getLogger(__name__)

_EXEMPT_PREFIXES = ("/healthz", "/readyz", "/static/")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes, stop_after: int) -> int:
    """Nesting depth of a JSON text (strings ignored), counting no further than needed."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub(b'""', data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    break
        else:
            depth -= 1
    return deepest


def _check_json_depth() -> None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    data = request.get_data(cache=True)
    if data.lstrip()[:1] not in (b"{", b"["):
        return
    limit = get_state().settings.max_json_depth
    if json_depth(data, limit) > limit:
        raise BadRequest(
            f"JSON body nested deeper than {limit} levels",
            details=[{"loc": ["body"], "msg": f"nesting deeper than {limit}"}],
        )


def client_address() -> str:
    """The client's address (after ProxyFix, the one the trusted proxy saw)."""
    return request.remote_addr or "unknown"


def caller_key() -> str:
    """Who to count: API key prefix or browser session (no database look-up), else address.

    An unverified prefix or session token is fine here: inventing them only moves the
    attacker onto the per-address limit, and a real key's prefix cannot be spent by
    anyone else without also failing authentication. A session is counted by a digest
    of its token, never the token itself (limiter keys may be stored in Redis).
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        parts = token.strip().split("_", 2)
        if len(parts) == 3 and parts[0] == "vc":
            return f"apikey:{parts[1][:16]}"
    sid = session.get(SESSION_KEY)
    if isinstance(sid, str) and sid:
        return f"session:{token_digest(sid)[:24]}"
    return f"addr:{client_address()}"


def _assign_request_id() -> None:
    g.request_id = new_request_id()


def _exempt() -> bool:
    return request.path.startswith(_EXEMPT_PREFIXES)


def register_hardening(app: Flask, *, workers: int = 1) -> None:
    """Install proxy trust, rate limits and the JSON depth check on ``app``.

    ``workers`` is how many processes serve this app side by side (gunicorn workers under
    ``vitalcast serve``; 1 for a single-process server or a test client). Without Redis
    each enforces its share of the limits, so all of them together keep the configured
    ones.
    """
    settings = get_state(app).settings
    if settings.proxy_hops > 0:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.before_request(_check_json_depth)
    if not settings.rate_limit_enabled:
        return
    limits = effective_limits(settings, workers)
    limiter = Limiter(
        key_func=client_address,
        # exempt_when on each limit: flask-limiter applies application_limits_exempt_when
        # only to limits it builds itself, not to ApplicationLimit objects given here, so
        # health probes were counted (and refused with 429) until it was set per limit.
        application_limits=[
            ApplicationLimit(
                limits["VITALCAST_RATE_LIMIT_PER_CALLER"],
                key_function=caller_key,
                exempt_when=_exempt,
            ),
            ApplicationLimit(
                limits["VITALCAST_RATE_LIMIT_PER_ADDRESS"],
                key_function=client_address,
                exempt_when=_exempt,
            ),
        ],
        storage_uri=settings.redis_url or "memory://",
        strategy="moving-window",
        # Redis down must not take the service down with it: every limited request
        # answered 500. Until Redis answers again each worker counts in its memory, with
        # the limits as configured (flask-limiter re-checks Redis and logs the switch).
        in_memory_fallback_enabled=bool(settings.redis_url),
        key_prefix="vitalcast",
        headers_enabled=True,
    )
    before = list(app.before_request_funcs.get(None, []))
    limiter.init_app(app)
    # Count requests before the guard authenticates them, so that floods of bad
    # credentials are limited too; the request id is assigned first for the 429 body.
    funcs = app.before_request_funcs.setdefault(None, [])
    added = [f for f in funcs if f not in before]
    for f in added:
        funcs.remove(f)
    funcs[0:0] = [_assign_request_id, *added]
    login = app.view_functions.get("web.login")
    if login is not None:
        limited: Any = limiter.limit(
            limits["VITALCAST_RATE_LIMIT_LOGIN"], key_func=client_address, methods=["POST"]
        )(login)
        app.view_functions["web.login"] = limited
    app.extensions["vitalcast_limiter"] = limiter
    logger.info(
        "rate limits on",
        extra={
            "storage": "redis (shared by all workers)"
            if settings.redis_url
            else f"memory (each of {workers} worker(s) enforces its share)",
            "limits": limits,
        },
    )
