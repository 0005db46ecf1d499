"""Administration API: users and the audit log (admins only, every read audited)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from vitalcast.security.permissions import Permission, requires
from vitalcast.security.tables import AuditEvent, User
from vitalcast.serving.context import audit_event, db
from vitalcast.serving.validation import int_arg, raise_if

admin = Blueprint("admin", __name__)


@admin.get("/users")
@requires(Permission.USERS_MANAGE)
def users() -> Response:
    """Users with their roles (never password hashes)."""
    rows = db().scalars(select(User).order_by(User.username)).all()
    audit_event("user.list", "R", resource="User")
    return jsonify(
        {
            "items": [
                {
                    "username": u.username,
                    "role": u.role,
                    "units": u.units or [],
                    "active": u.active,
                    "locked": u.locked_until is not None,
                    "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None,
                }
                for u in rows
            ]
        }
    )


@admin.get("/audit-events")
@requires(Permission.AUDIT_READ)
def audit_events() -> Response:
    """The audit log, newest first, filterable by actor, patient and event."""
    problems: list[dict[str, Any]] = []
    limit = int_arg("limit", 100, low=1, high=1000, problems=problems)
    raise_if(problems, "invalid query parameters")
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    for field in ("actor", "patient_id", "event"):
        value = request.args.get(field)
        if value:
            query = query.where(getattr(AuditEvent, field) == value)
    rows = db().scalars(query).all()
    audit_event("audit.read", "R", resource="AuditEvent")
    return jsonify(
        {
            "items": [
                {
                    "id": r.id,
                    "occurred_at": r.occurred_at.isoformat(),
                    "event": r.event,
                    "action": r.action,
                    "outcome": r.outcome,
                    "actor": r.actor,
                    "role": r.role,
                    "patient_id": r.patient_id,
                    "resource": r.resource,
                    "request_id": r.request_id,
                    "hash": r.hash,
                }
                for r in rows
            ]
        }
    )
