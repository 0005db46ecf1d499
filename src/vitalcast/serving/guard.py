"""The request guard: who is calling, may they, and the headers every response gets.

Runs before every view. The view's declared permission (security.permissions) decides:
public views pass; others need a caller — an API key (``Authorization: Bearer``) or a
server-side session (named by the cookie; not signed out, revoked, idle or past its
lifetime) — whose role holds the permission. Browser
sessions must also present the CSRF token on unsafe methods; API keys carry no ambient
authority (no cookies), so they need none.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from vitalcast.db.base import utcnow
from vitalcast.db.session import session_scope
from vitalcast.errors import (
    AppError,
    BadRequest,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    Unauthorized,
)
from vitalcast.json_input import JsonInputError, parse_json
from vitalcast.logging import request_context
from vitalcast.security.permissions import (
    ALL_UNITS_ONLY,
    PUBLIC,
    Permission,
    declared_permission,
    role_allows,
)
from vitalcast.security.service import Principal, verify_api_key
from vitalcast.security.sessions import (
    SESSION_KEY,
    SessionPolicy,
    check_session,
    end_session,
    end_token,
    open_session,
    touch,
)
from vitalcast.security.tables import ApiKey, User
from vitalcast.serving.cds_auth import remember_jti, verify_cds_jwt
from vitalcast.serving.context import audit_event, db, new_request_id
from vitalcast.serving.errors import render_error, wants_json
from vitalcast.serving.fhir_outcome import FHIR_BASE
from vitalcast.serving.state import get_state
from vitalcast.text_input import NUL, json_text_problems, shown, unstorable

logger = logging.getLogger(__name__)

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def csrf_token() -> str:
    """The session's CSRF token (created on first use), for forms and fetch headers."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def _api_key_principal(header: str) -> Principal | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    key = verify_api_key(db(), token.strip())
    if key is None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        key.last_used_at = now  # coarse, to keep the hot path free of a write per request
    return Principal("api_key", key.id, key.name, key.role)


def _background_request() -> bool:
    """Requests a page makes by itself (live updates) are not user activity.

    Otherwise an open ward page would keep its session alive forever and the automatic
    sign-out after inactivity (HIPAA 164.312(a)(2)(iii)) would never happen.
    """
    return request.endpoint == "api.events" or request.headers.get("X-Background") == "1"


def _session_principal() -> Principal | None:
    """The user of the server-side session the cookie names, if it is still valid.

    An invalid session (signed out, revoked, idle, past its lifetime, or its user
    disabled) clears the cookie; one that ran out is also marked revoked, committed at
    once since the answer (401) rolls the request back. Activity is recorded at most once
    a minute (see vitalcast.security.sessions), and committed at once as well, so that a
    request answered with an error still counts as activity.
    """
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        if session.get("user_id") is not None:  # a cookie of the former, client-side kind
            session.clear()
        return None
    now = utcnow()
    check = check_session(db(), token, SessionPolicy.of(get_state().settings), now)
    if not check.valid or check.row is None or check.user is None:
        if check.row is not None and check.row.revoked_at is None:
            end_session(check.row, check.status, now)
            db().commit()
        session.clear()
        g.session_expired = check.status in ("idle", "expired")
        return None
    if not _background_request() and touch(check.row, now):
        db().commit()
    g.web_session = token
    return user_principal(check.user)


def user_principal(user: User) -> Principal:
    """The principal of a signed-in user: their role and units as stored right now."""
    return Principal("user", user.id, user.username, user.role, tuple(user.units or ()))


def start_session(user: User, *, method: str) -> None:
    """Sign ``user`` in: a new server-side session whose token alone goes in the cookie.

    The cookie is emptied first (no state survives from before sign-in: no session
    fixation), then gets the token and a fresh CSRF token; the sign-in is audited with
    the user as actor. Password and SSO sign-in both end here.
    """
    token = open_session(db(), user, SessionPolicy.of(get_state().settings))
    session.clear()
    session[SESSION_KEY] = token
    csrf_token()
    signed_in(user)
    audit_event("user.login", "E", details={"username": user.username, "method": method})


def end_current_session(reason: str) -> None:
    """Revoke the session of this request's cookie (sign-out) and empty the cookie."""
    token = session.get(SESSION_KEY)
    if isinstance(token, str) and token:
        end_token(db(), token, reason)
    session.clear()


def still_authorised(who: Principal) -> Callable[[], bool]:
    """A re-check of the caller's credentials, for responses that outlive the request.

    A live-update stream stays open for hours; it calls this to learn whether the session
    is still valid (not signed out, revoked, idle or expired, its user active) or the API
    key not revoked or expired. Each call reads the database on a short session of its
    own (the request's was closed when the stream started). Any failure counts as "no":
    the stream ends rather than deliver events it cannot vouch for.
    """
    state = get_state()
    policy = SessionPolicy.of(state.settings)
    token: str | None = g.get("web_session")

    def check() -> bool:
        try:
            with state.sessions() as s:
                now = utcnow()
                if who.kind == "user":
                    return token is not None and check_session(s, token, policy, now).valid
                if who.kind == "api_key":
                    key = s.get(ApiKey, who.id)
                    return (
                        key is not None
                        and key.revoked_at is None
                        and (key.expires_at is None or key.expires_at > now)
                    )
        except Exception:
            logger.warning("credential re-check failed; ending the stream", exc_info=True)
        return False

    return check


def signed_in(user: User) -> None:
    """Make ``user`` the caller of the rest of this request.

    Sign-in runs on a public route, where the guard set no principal; without this the
    ``user.login`` event would be audited as ``anonymous`` instead of the user who
    signed in.
    """
    who = user_principal(user)
    g.principal = who
    request_context.set(
        {"request_id": g.get("request_id"), "route": request.endpoint, "user": who.actor}
    )


def _cds_principal(header: str) -> Principal:
    """An EHR calling a CDS service with its signed JWT (CDS Hooks 2.0)."""
    settings = get_state().settings
    base = (settings.public_url or request.host_url).rstrip("/")
    path = request.path.removesuffix("/feedback")
    claims = verify_cds_jwt(header, audience=base + path, trusted=settings.cds_trusted_issuers)
    # In a unit of work of its own: the token is used up whatever the request then does.
    with session_scope(get_state().sessions) as session:
        remember_jti(session, claims)
    return Principal("cds_client", 0, str(claims["iss"]), "integration")


def _authenticate() -> Principal | None:
    header = request.headers.get("Authorization")
    if header and request.path.startswith("/cds-services/") and header.count(".") == 2:
        return _cds_principal(header)
    if header:
        who = _api_key_principal(header)
        if who is None:
            raise Unauthorized("invalid, expired or revoked API key")
        return who
    who = _session_principal()
    if who is not None and request.method in _UNSAFE:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
        # As bytes: compare_digest refuses str holding anything but ASCII (a TypeError,
        # a 500), and a header or form field may hold anything.
        if not hmac.compare_digest(str(sent).encode(), str(session.get("csrf", "")).encode()):
            raise Forbidden("missing or wrong CSRF token; reload the page and try again")
    return who


def _before_request() -> ResponseReturnValue | None:
    g.request_id = g.get("request_id") or new_request_id()  # security.http may set it first
    g.started = utcnow()
    request_context.set({"request_id": g.request_id, "route": request.endpoint})
    limit = get_state().settings.max_request_bytes
    if _body_too_large(limit):
        return render_error(PayloadTooLarge(f"request body larger than {limit} bytes"))
    unstorable_text = _text_problems()
    if unstorable_text:
        return render_error(_refusal(unstorable_text))
    view = get_state_view()
    if view is None:
        return None  # routing answers 404/405 through the error handler
    needed = declared_permission(view)
    try:
        who = None if needed == PUBLIC else _authenticate()
        if needed == PUBLIC:
            return None
        if who is None:
            if not wants_json():
                return redirect(_login_url())
            if request.path.startswith("/cds-services/"):
                raise Unauthorized("CDS Hooks requests need a JWT: Authorization: Bearer <jwt>")
            raise Unauthorized("sign in or send an API key: Authorization: Bearer <key>")
        g.principal = who
        request_context.set(
            {"request_id": g.request_id, "route": request.endpoint, "user": who.actor}
        )
        assert isinstance(needed, Permission)
        if not role_allows(who.role, needed):
            _deny(needed)
            raise Forbidden(f"your role ({who.role}) does not allow {needed.value}")
        if who.units and needed in ALL_UNITS_ONLY:
            _deny(needed, reason="bound to units")
            raise Forbidden(
                f"{needed.value} spans every unit; it needs a user bound to no unit"
                f" (you are bound to {', '.join(who.units)})"
            )
    except AppError as error:
        return render_error(error)
    return None


def _deny(needed: Permission, *, reason: str | None = None) -> None:
    """Audit a refusal by the guard, committed at once (the 403 rolls the request back)."""
    details = {"needed": needed.value} | ({"reason": reason} if reason else {})
    audit_event("access.denied", "E", outcome="denied", resource=request.path, details=details)
    db().commit()


def _login_url() -> str:
    """The sign-in page, told to come back here afterwards when "here" is a page one can
    return to by GET (a form POST cannot be replayed; the sign-in then lands on the
    ward). The sign-in view checks the target again (vitalcast.security.redirects)."""
    if request.method != "GET":
        return url_for("web.login")
    return url_for("web.login", next=request.full_path.rstrip("?"))


def _body_too_large(limit: int) -> bool:
    """Whether the body is above ``limit`` bytes, with or without a Content-Length.

    A chunked body has none: gunicorn hands it over as a stream that werkzeug cuts at
    MAX_CONTENT_LENGTH (the limit plus one byte, see ``configure_app``) without an error,
    so the route would read a truncated body and answer "not valid JSON". It is read here
    (and cached for the route) to see whether it went past the limit.
    """
    if request.content_length is not None:
        return request.content_length > limit
    if request.method not in _UNSAFE:
        return False
    return len(request.get_data(cache=True)) > limit


# Bodies read as form fields; any other body of an unsafe request is JSON to every route
# that reads one.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Raw bytes that may hold a NUL or a surrogate in a JSON body: a raw NUL, or an escape of
# U+0000 or of U+D800-U+DFFF. Only a body with one is parsed here (a pair of surrogate
# escapes, an emoji, is a false alarm that the walk clears).
_SUSPECT_JSON = re.compile(rb"\x00|\\u(?:0000|[dD][89a-fA-F])")
_MAX_TEXT_PROBLEMS = 20


def _text_problems() -> list[dict[str, Any]]:
    """Where the request carries text PostgreSQL cannot store or compare: a NUL character
    or a lone surrogate (see :mod:`vitalcast.text_input`), in the path, the query string,
    a form body or a JSON body, on every route. Refused here as bad input instead of
    failing in the driver as a 500, wherever a view would take the value."""
    problems: list[dict[str, Any]] = []
    why = unstorable(request.path)
    if why:
        problems.append({"loc": ["path"], "msg": why})
    problems += _field_problems("query", request.args.items(multi=True))
    if request.method in _UNSAFE:
        raw = request.get_data(cache=True)  # first: the form is then parsed from the copy
        if request.mimetype in _FORM_TYPES:
            problems += _field_problems("form", request.form.items(multi=True))
        elif _SUSPECT_JSON.search(raw):
            problems += _json_problems(raw)
    return problems[:_MAX_TEXT_PROBLEMS]


def _field_problems(where: str, fields: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for name, value in fields:
        why = unstorable(name) or unstorable(value)
        if why:
            problems.append({"loc": [where, shown(name)], "msg": why})
    return problems


def _json_problems(raw: bytes) -> list[dict[str, Any]]:
    """Each string or key of a JSON body that cannot be stored, located in the document.

    A body that is not JSON at all is left to the view, which says so (400); only a NUL
    in it is still refused here, as the whole body."""
    try:
        doc = parse_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, JsonInputError):
        if b"\x00" in raw or b"\\u0000" in raw:
            return [{"loc": ["body"], "msg": f"{NUL} (\\u0000)"}]
        return []
    return json_text_problems(doc, ["body"], limit=_MAX_TEXT_PROBLEMS)


def _refusal(problems: list[dict[str, Any]]) -> AppError:
    """Every problem in ``details``; the first, with its place, in the message too (a
    client's log often keeps only the message). CDS Hooks routes answer a request they
    cannot read with 400, as the rest of that API does; the others with 422."""
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    message = f"text that cannot be stored: {where}: {first['msg']}{more}"
    if request.path.startswith("/cds-services/"):
        return BadRequest(message, details=problems)
    return InvalidInput(message, details=problems)


def get_state_view() -> Callable[..., Any] | None:
    endpoint = request.endpoint
    if endpoint is None:
        return None
    from flask import current_app

    return current_app.view_functions.get(endpoint)


def _after_request(response: Response) -> Response:
    session_db = g.pop("db", None)
    if session_db is not None:
        try:
            if response.status_code < 400:
                session_db.commit()
            else:
                session_db.rollback()
        finally:
            session_db.close()
    headers = response.headers
    headers["X-Request-ID"] = g.get("request_id", "")
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    if (
        request.path.startswith(("/api/", FHIR_BASE, "/cds-services"))
        or response.mimetype == "text/html"
    ):
        headers.setdefault("Cache-Control", "no-store")
    if request.is_secure:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    started = g.get("started")
    duration_ms = (utcnow() - started).total_seconds() * 1000 if started else None
    logger.info(
        "request",
        extra={
            "method": request.method,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2) if duration_ms else None,
        },
    )
    return response


def _teardown(_exc: BaseException | None) -> None:
    session_db = g.pop("db", None)
    if session_db is not None:
        session_db.rollback()
        session_db.close()
    request_context.set(None)


def register_guard(app: Flask) -> None:
    """Install the guard and response hooks, and refuse routes without a permission."""
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.teardown_request(_teardown)
    app.jinja_env.globals["csrf_token"] = csrf_token


def check_routes_declared(app: Flask) -> None:
    """Fail start-up if any route's view lacks a declared permission."""
    missing = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if declared_permission(app.view_functions[rule.endpoint]) is None
    ]
    if missing:
        raise RuntimeError(f"routes without a declared permission: {', '.join(sorted(missing))}")
