"""The audit trail: typed events written to an append-only, hash-chained table.

Each row stores the hash of the row before it; the row's own hash covers its fields and
that link, so changing, deleting or reordering any row breaks the chain, which
:func:`verify_chain` reports. Events are written in the caller's transaction, so an
action and its audit record commit or roll back together (HIPAA 164.312(b)).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.security.tables import AuditEvent

GENESIS = "0" * 64
# Any constant works; it names the lock that serialises chain appends on PostgreSQL.
_CHAIN_LOCK_ID = 0x56495441

Action = Literal[
    "C", "R", "U", "D", "E"
]  # FHIR AuditEvent.action: create/read/update/delete/execute


@dataclass(frozen=True)
class Event:
    """One auditable action."""

    event: str  # e.g. "patient.viewed", "prediction.served", "user.login"
    action: Action
    actor: str
    role: str | None = None
    outcome: str = "success"
    patient_id: str | None = None  # public id, never an MRN
    resource: str | None = None
    client_addr: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Agent:
    """Who performs an action (FHIR AuditEvent.agent), passed down to services.

    Services that must audit what they do (model promotion, ingest batches, quarantine
    reads) take an ``Agent`` rather than a bare actor string, so an HTTP caller can hand
    over its role, client address and request id, and a CLI or job its own name.
    """

    actor: str
    role: str | None = None
    client_addr: str | None = None
    request_id: str | None = None

    def event(
        self,
        event: str,
        action: Action,
        *,
        outcome: str = "success",
        patient_id: str | None = None,
        resource: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Event:
        """An :class:`Event` performed by this agent."""
        return Event(
            event=event,
            action=action,
            actor=self.actor,
            role=self.role,
            outcome=outcome,
            patient_id=patient_id,
            resource=resource,
            client_addr=self.client_addr,
            request_id=self.request_id,
            details=details or {},
        )


SYSTEM = Agent("system")
CLI = Agent("cli")


def _digest(prev_hash: str, occurred_at: datetime, ev: Event) -> str:
    body = json.dumps(
        {
            "prev": prev_hash,
            "at": occurred_at.isoformat(timespec="microseconds"),
            "event": ev.event,
            "action": ev.action,
            "outcome": ev.outcome,
            "actor": ev.actor,
            "role": ev.role,
            "patient": ev.patient_id,
            "resource": ev.resource,
            "client": ev.client_addr,
            "request": ev.request_id,
            "details": ev.details,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(session: Session, ev: Event) -> AuditEvent:
    """Append ``ev`` to the chain inside the caller's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        # Serialise appends so two transactions never link to the same predecessor.
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_ID})
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev_hash = prev or GENESIS
    occurred_at = utcnow()
    row = AuditEvent(
        occurred_at=occurred_at,
        event=ev.event,
        action=ev.action,
        outcome=ev.outcome,
        actor=ev.actor,
        role=ev.role,
        patient_id=ev.patient_id,
        resource=ev.resource,
        client_addr=ev.client_addr,
        request_id=ev.request_id,
        details=ev.details or None,
        prev_hash=prev_hash,
        hash=_digest(prev_hash, occurred_at, ev),
    )
    session.add(row)
    session.flush()
    return row


ACTIONS: dict[str, str] = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
OUTCOMES = ("success", "failure", "denied")


@dataclass(frozen=True)
class AuditFilter:
    """What the admin audit view and ``vitalcast audit export`` select (all optional).

    ``event`` ending in ``*`` matches a prefix (``model.*``: every model change); the time
    range is ``since <= occurred_at < until``.
    """

    actor: str | None = None  # the user or key: "user:alice", "api_key:ehr", "cli"
    patient_id: str | None = None
    event: str | None = None
    action: str | None = None  # FHIR AuditEvent.action: C, R, U, D or E
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` (over :class:`AuditEvent`) restricted to the matching events."""
        for column, value in (
            (AuditEvent.actor, self.actor),
            (AuditEvent.patient_id, self.patient_id),
            (AuditEvent.action, self.action),
            (AuditEvent.outcome, self.outcome),
        ):
            if value:
                query = query.where(column == value)
        if self.event and self.event.endswith("*"):
            query = query.where(AuditEvent.event.startswith(self.event[:-1], autoescape=True))
        elif self.event:
            query = query.where(AuditEvent.event == self.event)
        if self.since is not None:
            query = query.where(AuditEvent.occurred_at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.occurred_at < self.until)
        return query

    def describe(self) -> dict[str, str]:
        """The filters in use, for the audit event that records the read itself."""
        return {
            k: v.isoformat() if isinstance(v, datetime) else v
            for k, v in vars(self).items()
            if v is not None and v != ""
        }


@dataclass(frozen=True)
class ChainCheck:
    """Result of :func:`verify_chain`."""

    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None


def verify_chain(session: Session, *, batch_size: int = 5000) -> ChainCheck:
    """Walk the chain in id order and report the first row that does not link or hash."""
    prev_hash = GENESIS
    checked = 0
    last_id = 0
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.id > last_id)
            .order_by(AuditEvent.id)
            .limit(batch_size)
        ).all()
        if not rows:
            return ChainCheck(ok=True, checked=checked)
        for row in rows:
            ev = Event(
                event=row.event,
                action=row.action,  # type: ignore[arg-type]
                actor=row.actor,
                role=row.role,
                outcome=row.outcome,
                patient_id=row.patient_id,
                resource=row.resource,
                client_addr=row.client_addr,
                request_id=row.request_id,
                details=row.details or {},
            )
            if row.prev_hash != prev_hash:
                return ChainCheck(False, checked, row.id, "link to the previous row is broken")
            if _digest(prev_hash, row.occurred_at, ev) != row.hash:
                return ChainCheck(False, checked, row.id, "row content does not match its hash")
            prev_hash = row.hash
            checked += 1
            last_id = row.id
