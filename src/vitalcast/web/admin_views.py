"""Administration pages: users and roles, API keys, and the audit log with filters."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from vitalcast.clinical.times import TimeOutOfRange, check_year, parse_iso
from vitalcast.db.base import MAX_ROW_ID, utcnow
from vitalcast.errors import InvalidInput, NotFound
from vitalcast.security.audit import ACTIONS, OUTCOMES, AuditFilter
from vitalcast.security.audit_anchor import last_recorded_anchor
from vitalcast.security.permissions import ROLE_PERMISSIONS, ROLES, Permission, requires
from vitalcast.security.service import MAX_KEY_DAYS, create_api_key, create_user
from vitalcast.security.tables import ApiKey, AuditEvent, User
from vitalcast.serving.context import audit_event, current_principal, db

web_admin = Blueprint("web_admin", __name__, url_prefix="/admin")

AUDIT_PAGE = 100
_DAYS = re.compile(r"[0-9]{1,4}")


@web_admin.get("/users")
@requires(Permission.USERS_MANAGE)
def users() -> str:
    rows = db().scalars(select(User).order_by(User.username)).all()
    audit_event("user.list", "R", resource="User")
    matrix = {role: sorted(p.value for p in ROLE_PERMISSIONS[role]) for role in ROLES}
    return render_template(
        "web/admin_users.html", users=rows, roles=ROLES, matrix=matrix, now=utcnow()
    )


@web_admin.post("/users")
@requires(Permission.USERS_MANAGE)
def create_user_view() -> Response:
    form = request.form
    units = [u.strip() for u in form.get("units", "").split(",") if u.strip()]
    user = create_user(  # checks the username, the units, the role and the password
        db(),
        username=form.get("username", "").strip(),
        password=form.get("password", ""),
        role=form.get("role", ""),
        units=units or None,
    )
    audit_event("user.created", "C", resource=f"User/{user.id}", details={"role": user.role})
    flash(f"User {user.username} created with role {user.role}.")
    return redirect(url_for("web_admin.users"))  # type: ignore[return-value]


@web_admin.post("/users/<int:user_id>/active")
@requires(Permission.USERS_MANAGE)
def set_active(user_id: int) -> Response:
    user = db().get(User, user_id) if user_id <= MAX_ROW_ID else None
    if user is None:
        raise NotFound("no such user")
    active = request.form.get("active") == "1"
    if not active and current_principal().kind == "user" and current_principal().id == user.id:
        raise InvalidInput(
            "you cannot deactivate your own account",
            details=[{"loc": ["form", "active"], "msg": "ask another administrator"}],
        )
    user.active = active
    audit_event("user.updated", "U", resource=f"User/{user.id}", details={"active": active})
    flash(f"User {user.username} {'activated' if active else 'deactivated'}.")
    return redirect(url_for("web_admin.users"))  # type: ignore[return-value]


@web_admin.get("/api-keys")
@requires(Permission.USERS_MANAGE)
def api_keys() -> str:
    rows = db().scalars(select(ApiKey).order_by(ApiKey.created_at.desc())).all()
    audit_event("apikey.list", "R", resource="ApiKey")
    return render_template("web/admin_keys.html", keys=rows, roles=ROLES, now=utcnow())


@web_admin.post("/api-keys")
@requires(Permission.USERS_MANAGE)
def create_key() -> str:
    """Create a key and show it once (only its hash is stored)."""
    days = request.form.get("days", "").strip()
    if days and not _DAYS.fullmatch(days):  # str.isdigit() takes "²", which int() refuses
        raise InvalidInput(
            "invalid lifetime",
            details=[{"loc": ["form", "days"], "msg": f"a whole number, 1 to {MAX_KEY_DAYS}"}],
        )
    who = current_principal()
    row, secret = create_api_key(  # checks the name, the role and the lifetime
        db(),
        name=request.form.get("name", "").strip(),
        role=request.form.get("role", ""),
        expires_in_days=int(days) if days else None,
        created_by=who.id if who.kind == "user" else None,
    )
    audit_event("apikey.created", "C", resource=f"ApiKey/{row.prefix}", details={"role": row.role})
    rows = db().scalars(select(ApiKey).order_by(ApiKey.created_at.desc())).all()
    return render_template(
        "web/admin_keys.html", keys=rows, roles=ROLES, now=utcnow(), new_key=secret, new_row=row
    )


@web_admin.post("/api-keys/<prefix>/revoke")
@requires(Permission.USERS_MANAGE)
def revoke_key(prefix: str) -> Response:
    row = db().scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise NotFound("no such API key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit_event("apikey.revoked", "U", resource=f"ApiKey/{row.prefix}")
    flash(f"API key {row.name} revoked.")
    return redirect(url_for("web_admin.api_keys"))  # type: ignore[return-value]


def _when(name: str, problems: list[dict[str, Any]], *, end: bool) -> datetime | None:
    """A date (the whole day) or a date and time (UTC unless it says otherwise)."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        if len(raw) == 10:  # a day: "since" starts it, "until" includes it
            day = date.fromisoformat(raw)
            check_year(day, name)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        parsed = parse_iso(raw, name)
    except TimeOutOfRange as exc:  # year 9999 reached the database and failed there
        problems.append({"loc": ["query", name], "msg": str(exc)})
        return None
    except ValueError:
        problems.append(
            {"loc": ["query", name], "msg": "a date like 2026-11-28 or 2026-11-28T09:30"}
        )
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Anchoring runs every 15 minutes (Kubernetes) or hourly (`monitor run`); an anchor older
# than this means the job has stopped, and deleted newest events would go unnoticed.
ANCHOR_STALE_AFTER = timedelta(hours=2)


def _anchoring_status() -> dict[str, Any]:
    """When the chain was last verified and anchored, so that an administrator sees a
    stopped anchoring job (the window in which deleted events go unnoticed grows)."""
    try:
        recorded = last_recorded_anchor(db())
    except ValueError:
        return {"state": "unreadable"}
    if recorded is None:
        return {"state": "never"}
    event, anchor = recorded
    details = event.details or {}
    return {
        "state": "anchored",
        "at": event.occurred_at,
        "head_id": anchor.head_id,
        "rows": anchor.rows,
        "full": bool(details.get("full_walk")),
        "verified": details.get("verified_events"),
        "stale": utcnow() - event.occurred_at > ANCHOR_STALE_AFTER,
    }


@web_admin.get("/audit")
@requires(Permission.AUDIT_READ)
def audit() -> str:
    """The audit log, newest first, filtered by user, patient, event, action, outcome, time."""
    problems: list[dict[str, Any]] = []
    since = _when("since", problems, end=False)
    until = _when("until", problems, end=True)
    texts = {
        k: request.args.get(k, "").strip()
        for k in ("actor", "event", "patient_id", "action", "outcome")
    }
    if texts["action"] and texts["action"] not in ACTIONS:
        problems.append({"loc": ["query", "action"], "msg": "one of C, R, U, D, E"})
    if texts["outcome"] and texts["outcome"] not in OUTCOMES:
        problems.append({"loc": ["query", "outcome"], "msg": "success, failure or denied"})
    if problems:
        raise InvalidInput("invalid filter", details=problems)
    selected = AuditFilter(**{k: v or None for k, v in texts.items()}, since=since, until=until)
    query = selected.apply(select(AuditEvent).order_by(AuditEvent.id.desc())).limit(AUDIT_PAGE)
    rows = db().scalars(query).all()
    audit_event("audit.read", "R", resource="AuditEvent", details=selected.describe())
    return render_template(
        "web/admin_audit.html",
        anchoring=_anchoring_status(),
        rows=rows,
        filters=texts,
        actions=ACTIONS,
        outcomes=OUTCOMES,
        since=request.args.get("since", ""),
        until=request.args.get("until", ""),
        page_size=AUDIT_PAGE,
    )
