"""Clinician web UI: sign-in and the ward list (server-rendered, no inline scripts)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, session, url_for

from vitalcast.errors import Forbidden
from vitalcast.security.permissions import Permission, public, requires, role_allows
from vitalcast.security.service import authenticate
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.guard import csrf_token
from vitalcast.serving.patients import list_ward, ward_units
from vitalcast.serving.state import get_state

web = Blueprint("web", __name__)

WARD_PAGE_SIZE = 500


def _safe_next(target: str | None) -> str:
    """Only same-site relative redirects after sign-in (no open redirect)."""
    if not target:
        return url_for("web.ward")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.ward")
    return target


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
        if not sent or sent != session.get("csrf"):
            raise Forbidden("the sign-in form expired; reload the page and try again")
        username = request.form.get("username", "").strip()
        result = authenticate(db(), username=username, password=request.form.get("password", ""))
        if result.user is not None:
            session.clear()
            session["user_id"] = result.user.id
            session["seen"] = time.time()
            csrf_token()
            audit_event("user.login", "E", details={"username": username}, session=db())
            return redirect(_safe_next(request.args.get("next")))  # type: ignore[return-value]
        audit_event(
            "user.login",
            "E",
            outcome="failure",
            details={"username": username[:64], "reason": result.reason},
        )
        db().commit()  # the failed attempt is audited even though we answer 401
        error = (
            "This account is locked after repeated failed sign-ins. Try again later."
            if result.reason == "locked"
            else "Wrong username or password."
        )
        return render_template("web/login.html", error=error), 401
    expired = request.args.get("expired") is not None
    return render_template("web/login.html", error=error, expired=expired)


@web.post("/logout")
@requires(Permission.PATIENTS_READ)
def logout() -> Response:
    audit_event("user.logout", "E")
    session.clear()
    return redirect(url_for("web.login"))  # type: ignore[return-value]


@web.get("/ward")
@requires(Permission.PATIENTS_READ)
def ward() -> str:
    """Patients of the chosen unit, highest current risk first."""
    who = current_principal()
    show_ids = role_allows(who.role, Permission.IDENTIFIERS_READ)
    unit = request.args.get("unit") or None
    state = get_state()
    rows, total = list_ward(
        db(), unit=unit, limit=WARD_PAGE_SIZE, cipher=state.cipher if show_ids else None
    )
    audit_event(
        "patient.list",
        "R",
        resource="ward",
        details={"patients": [r.patient_id for r in rows], "identifiers": show_ids},
    )
    predictor = state.predictor
    return render_template(
        "web/ward.html",
        rows=rows,
        total=total,
        unit=unit,
        units=ward_units(db()),
        high_risk=sum(1 for r in rows if r.band in ("high", "critical")),
        model=predictor,
        show_ids=show_ids,
        user=who,
    )
