"""Request context: request id, database session (one unit of work), caller, audit."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import g, request
from sqlalchemy.orm import Session

from vitalcast.security import audit
from vitalcast.security.service import Principal
from vitalcast.serving.state import get_state

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def new_request_id() -> str:
    """Use the caller's X-Request-ID when it is well-formed (for tracing), else make one."""
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def request_id() -> str | None:
    rid: str | None = g.get("request_id")
    return rid


def db() -> Session:
    """The request's session; committed after a successful response, else rolled back."""
    if "db" not in g:
        g.db = get_state().sessions()
    session: Session = g.db
    return session


def principal() -> Principal | None:
    who: Principal | None = g.get("principal")
    return who


def current_principal() -> Principal:
    """The authenticated caller (the permission hook guarantees one on protected views)."""
    who: Principal = g.principal
    return who


def current_agent() -> audit.Agent:
    """The caller as an audit agent, for services that audit what they do."""
    who = principal()
    return audit.Agent(
        who.actor if who else "anonymous",
        role=who.role if who else None,
        client_addr=request.remote_addr,
        request_id=request_id(),
    )


def audit_event(
    event: str,
    action: audit.Action,
    *,
    patient_id: str | None = None,
    resource: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
    session: Session | None = None,
) -> None:
    """Write an audit event for the current request in its unit of work."""
    audit.record(
        session or db(),
        current_agent().event(
            event,
            action,
            outcome=outcome,
            patient_id=patient_id,
            resource=resource,
            details=details,
        ),
    )
