"""Tables of people, credentials, browser sessions and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    event,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from vitalcast.db.base import Base, UTCDateTime, utcnow
from vitalcast.db.types import BigIntPK


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    units: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKey(Base):
    """An integration credential. Only the SHA-256 of the secret part is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebSession(Base):
    """One browser sign-in, so that it can be ended on the server.

    The session cookie carries a random token; ``id`` is the SHA-256 of that token, so a
    copy of this table (a backup, a replica) opens no session. A session is valid while
    it is not revoked, younger than ``VITALCAST_SESSION_MAX_HOURS`` and active within
    ``VITALCAST_SESSION_IDLE_MINUTES`` (see :mod:`vitalcast.security.sessions`).
    """

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # "logout", "idle", "expired", "inactive", "disabled", "privileges_changed"
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


def _changed(user: User, name: str) -> bool:
    history = inspect(user).attrs[name].history
    return bool(history.added or history.deleted) and list(history.added) != list(history.deleted)


@event.listens_for(Session, "before_flush")
def _end_sessions_of_changed_users(session: Session, _context: Any, _instances: Any) -> None:
    """Revoke a user's open sessions in the transaction that disables them or changes their
    role or units, whichever code path does it (CLI, admin page, SSO sign-in, a script).

    Each request rebuilds the caller from the stored user, so a change would apply anyway;
    ending the sessions makes it unambiguous: whoever holds the old cookie, on whichever
    workstation, must sign in again under the new rights, and a disabled user's open
    pages and live-update streams end at once.
    """
    reasons: dict[int, str] = {}
    for obj in session.dirty:
        if not isinstance(obj, User) or obj.id is None:
            continue
        if _changed(obj, "active") and not obj.active:
            reasons[obj.id] = "disabled"
        elif _changed(obj, "role") or _changed(obj, "units"):
            reasons[obj.id] = "privileges_changed"
    if not reasons:
        return
    now = utcnow()
    with session.no_autoflush:
        open_sessions = session.scalars(
            select(WebSession).where(
                WebSession.user_id.in_(sorted(reasons)), WebSession.revoked_at.is_(None)
            )
        ).all()
    for row in open_sessions:
        row.revoked_at = now
        row.revoked_reason = reasons[row.user_id]


class AuditEvent(Base):
    """Append-only, HMAC-chained record of who did what to which patient's data.

    Shaped after FHIR AuditEvent: ``action`` (C/R/U/D/E), ``outcome``, agent (actor and
    role), entity (patient and resource). ``prev_hash`` links each row to the one before,
    so a changed, deleted or reordered row breaks the chain. ``chain_version`` says how
    ``hash`` was made (1: plain SHA-256, rows from before revision 0010; 2: HMAC-SHA-256
    under the audit key ``key_id``), see :mod:`vitalcast.security.audit`.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        # A patient's trail finds the listing events naming them by containment in this
        # list (security.audit.about_patient); PostgreSQL only (migration 0013).
        Index(
            "ix_audit_events_listed_patients",
            literal_column("(CAST(details AS JSONB) -> 'patients')").label("listed"),
            postgresql_using="gin",
            postgresql_ops={"listed": "jsonb_path_ops"},
            postgresql_where=text("event IN ('patient.list', 'ingest.batch')"),
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    resource: Mapped[str | None] = mapped_column(String(200), nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    chain_version: Mapped[int] = mapped_column(SmallInteger)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
