"""Clinician web UI: sign-in, sign-out and the ward list (server-rendered, no inline scripts).

Searches that carry identifiers (MRN, name) are POSTed, never put in a URL: URLs end up
in access logs, browser history and Referer headers.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from sqlalchemy import select

from vitalcast.clinical.tables import Patient
from vitalcast.db.base import utcnow
from vitalcast.errors import Forbidden, NotFound
from vitalcast.security.permissions import Permission, public, requires, role_allows
from vitalcast.security.redirects import safe_next
from vitalcast.security.service import LOCKOUT, MAX_FAILED_LOGINS, authenticate
from vitalcast.serving.context import audit_event, current_principal, db, principal
from vitalcast.serving.guard import end_current_session, start_session
from vitalcast.serving.patient_api import check_patient_visible
from vitalcast.serving.patients import ward_units
from vitalcast.serving.scoring import served_population
from vitalcast.serving.state import get_state
from vitalcast.web.ward import TREND_MIN_CHANGE, WardPage, build_ward

web = Blueprint("web", __name__)

WARD_PAGE_SIZE = 500
_MAX_SEARCH_CHARS = 64


@web.app_context_processor
def _page_context() -> dict[str, Any]:
    """What every page (error pages included) needs: the caller and what they may open."""
    who = principal()
    settings = get_state().settings

    def can(permission: str) -> bool:
        return who is not None and role_allows(who.role, Permission(permission))

    return {
        "user": who if who is not None and who.kind == "user" else None,
        "can": can,
        "idle_minutes": settings.session_idle_minutes,
    }


def _next_target() -> str | None:
    """The page to return to after sign-in, when it is safe (see :func:`safe_next`).

    The sign-in form carries it as a hidden field; a link to /login carries it in the
    query (the guard's redirect, the page script after an automatic sign-out)."""
    return safe_next(request.form.get("next") or request.args.get("next"))


@web.get("/")
@public
def index() -> Response:
    return redirect(url_for("web.ward"))  # type: ignore[return-value]


@web.route("/login", methods=["GET", "POST"])
@public
def login() -> Response | str | tuple[str, int]:
    """Sign in with a username and password (CSRF-protected form)."""
    error = None
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(
            sent.encode(), str(session.get("csrf", "")).encode()
        ):
            raise Forbidden("the sign-in form expired; reload the page and try again")
        username = request.form.get("username", "").strip()
        result = authenticate(db(), username=username, password=request.form.get("password", ""))
        if result.user is not None:
            start_session(result.user, method="password")
            return redirect(_next_target() or url_for("web.ward"))  # type: ignore[return-value]
        audit_event(
            "user.login", "E", outcome="failure", details=_failed_sign_in(username, result.reason)
        )
        db().commit()  # the failed attempt is audited even though we answer 401
        # One message for every failure: a distinct "locked" answer, which only an
        # existing account can give, told anyone who sent five wrong passwords whether
        # the name exists (the reason is in the audit trail for administrators).
        return _login_page(error=_SIGN_IN_FAILED), 401
    return _login_page(error=error, expired=request.args.get("expired") is not None)


def _failed_sign_in(username: str, reason: str | None) -> dict[str, str | None]:
    """What the audit trail keeps of a failed sign-in.

    An account's name, when it is one (locked, disabled, wrong password). A name that is
    no account is kept only as a keyed pseudonym (``FieldCipher.pseudonym``): people
    type their password into the username field, and the audit log can be neither edited
    nor purged. Repeated guesses of one name still share a pseudonym, and an auditor with
    the HMAC key can recompute it for a name they suspect.
    """
    if reason == "unknown":
        pseudonym = get_state().cipher.pseudonym("sign-in", username)
        return {"username_pseudonym": pseudonym, "reason": reason}
    return {"username": username[:64], "reason": reason}


_SIGN_IN_FAILED = (
    "Wrong username or password, or the account is locked after"
    f" {MAX_FAILED_LOGINS} failed sign-ins (for {LOCKOUT.seconds // 60} minutes)."
)


def _login_page(*, error: str | None, expired: bool = False) -> str:
    """The sign-in form, with the single sign-on button when an identity provider is
    configured (``VITALCAST_OIDC_ISSUER``); both return to the page that was asked for."""
    target = _next_target()
    sso = url_for("oidc.start", next=target) if get_state().settings.oidc_issuer else None
    return render_template("web/login.html", error=error, expired=expired, next=target, sso_url=sso)


@web.post("/logout")
@requires(Permission.PATIENTS_READ)
def logout() -> Response:
    """Sign out: the server-side session is revoked, so a copy of the cookie is useless."""
    audit_event("user.logout", "E")
    end_current_session("logout")
    return redirect(url_for("web.login"))  # type: ignore[return-value]


def _ward(
    *,
    unit: str | None,
    mrn: str = "",
    name: str = "",
    patient: str | None = None,
) -> tuple[WardPage, bool]:
    who = current_principal()
    show_ids = role_allows(who.role, Permission.IDENTIFIERS_READ)
    if (mrn or name) and not show_ids:
        raise Forbidden("searching by MRN or name needs the identifiers:read permission")
    state = get_state()
    predictor = state.predictor
    page = build_ward(
        db(),
        now=utcnow(),
        stale_after=_stale_after(),
        unit=unit,
        limit=WARD_PAGE_SIZE,
        cipher=state.cipher if show_ids else None,
        mrn_hmac=state.cipher.mrn_hash(mrn) if mrn else None,
        patient_public_id=patient,
        name_query=name or None,
        feature_names=predictor.feature_names if predictor else None,
        units=who.units,
        population=served_population(state.settings),
    )
    details: dict[str, Any] = {
        "patients": [e.row.patient_id for e in page.entries],
        "identifiers": show_ids,
    }
    if mrn or name:
        # What was searched for is itself identifying; record only how.
        details["search"] = "mrn" if mrn else "name"
    audit_event("patient.list", "R", resource="ward", details=details)
    return page, show_ids


def _stale_after() -> timedelta:
    return timedelta(minutes=get_state().settings.stale_after_minutes)


def _unit_asked(asked: str | None) -> tuple[str | None, list[str], str | None]:
    """The unit a ward link or form names, the caller's units with stays in progress, and
    the name asked for when it is none of them.

    Why: ``?unit=micu`` (a typed or old link; PV1-3 spellings vary) showed an empty ward
    headed "micu" with "0 high risk", which reads as a calm unit. A name that differs
    from one unit only in case or surrounding spaces now means that unit; any other is
    said to have no stay in progress instead of looking like an empty ward.
    """
    units = ward_units(db(), current_principal().units)
    if asked is None or asked in units:
        return asked, units, None
    same = [u for u in units if u.casefold() == asked.strip().casefold()]
    if len(same) == 1:
        return same[0], units, None
    return asked, units, asked


def _render_ward(
    page: WardPage, show_ids: bool, unit: str | None, units: list[str], **extra: Any
) -> str:
    return render_template(
        "web/ward.html",
        page=page,
        unit=unit,
        units=units,
        model=get_state().predictor,
        show_ids=show_ids,
        stale_minutes=get_state().settings.stale_after_minutes,
        trend_min_points=round(TREND_MIN_CHANGE * 100),
        now=utcnow(),
        **extra,
    )


@web.get("/ward")
@requires(Permission.PATIENTS_READ)
def ward() -> str:
    """Patients of the chosen unit, highest current risk first."""
    unit, units, unknown = _unit_asked(request.args.get("unit") or None)
    page, show_ids = _ward(unit=unit)
    return _render_ward(page, show_ids, unit, units, unknown_unit=unknown)


@web.post("/ward")
@requires(Permission.PATIENTS_READ)
def ward_search() -> str:
    """Search by exact MRN (keyed hash) or by name (within this ward's decrypted page)."""
    unit, units, unknown = _unit_asked(request.form.get("unit") or None)
    mrn = request.form.get("mrn", "").strip()[:_MAX_SEARCH_CHARS]
    name = request.form.get("name", "").strip()[:_MAX_SEARCH_CHARS]
    page, show_ids = _ward(unit=None if mrn else unit, mrn=mrn, name=name)
    return _render_ward(
        page,
        show_ids,
        unit,
        units,
        unknown_unit=unknown,
        searched="mrn" if mrn else ("name" if name else None),
    )


@web.get("/ward/rows/<patient_id>")
@requires(Permission.PATIENTS_READ)
def ward_row(patient_id: str) -> str:
    """One patient's ward row, re-rendered for a live update (the page swaps it in).

    A patient outside the caller's units is refused as the patient routes refuse one
    (:func:`check_patient_visible`): audited as ``access.denied``, answered exactly as an
    unknown id. Checked before the ward is read, so the denial is the request's only event.
    """
    missing = NotFound("no stay in progress for that patient")
    session = db()
    patient = session.scalar(select(Patient).where(Patient.public_id == patient_id))
    if patient is None:
        raise missing
    check_patient_visible(session, patient, refusal=missing)
    page, show_ids = _ward(unit=None, patient=patient_id)
    if not page.entries:
        raise missing
    return render_template(
        "web/ward_row.html",
        e=page.entries[0],
        show_ids=show_ids,
        now=utcnow(),
        model=get_state().predictor,
        stale_minutes=get_state().settings.stale_after_minutes,
    )


@web.get("/session/keepalive")
@requires(Permission.PATIENTS_READ)
def keepalive() -> tuple[str, int]:
    """ "Stay signed in": a request, so the server's idle clock restarts too."""
    return "", 204


@web.app_template_filter("ago")
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'35 min ago', '5 h 10 min ago', '3 d ago': data age as clinicians say it."""
    if moment is None:
        return "never"
    minutes = int(((now or utcnow()) - moment).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min ago" if rest else f"{hours} h ago"
    return f"{hours // 24} d ago"


@web.app_template_filter("when")
def when(moment: datetime | None) -> str:
    """A UTC time for pages (the browser script rewrites it in local time)."""
    return moment.strftime("%d %b %Y %H:%M UTC") if moment else "—"
