"""Administration API: users and the audit log (admins only, every read audited)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from vitalcast.security.audit import about_patient
from vitalcast.security.permissions import Permission, requires
from vitalcast.security.tables import AuditEvent, User
from vitalcast.serving.context import audit_event, db
from vitalcast.serving.openapi import operation
from vitalcast.serving.schemas import AuditList, AuditQuery, UserList, parse_query

admin = Blueprint("admin", __name__)


@admin.get("/users")
@requires(Permission.USERS_MANAGE)
@operation("Users and their roles", UserList, tags=("admin",))
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
@operation("The audit log", AuditList, query=AuditQuery, tags=("admin",))
def audit_events() -> Response:
    """The audit log, newest first, filterable by actor, patient and event."""
    args = parse_query(AuditQuery)
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(args.limit)
    if args.patient_id:
        query = query.where(about_patient(args.patient_id))
    for field in ("actor", "event"):
        value = getattr(args, field)
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
