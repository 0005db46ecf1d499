"""Server-side browser sessions: revocable, with an idle and an absolute lifetime.

A signed cookie alone cannot be taken back: a copy of it (another workstation, a proxy
log, malware) stays valid after sign-out, and the idle clock it carries is refreshed by
whoever holds it. So the cookie carries only a random token, and the row it names
(:class:`~vitalcast.security.tables.WebSession`) decides: signing out, disabling the
user or changing their role or units revokes the row, and every copy of the cookie with
it; idleness and age are measured from the server's own timestamps.

``last_seen_at`` is written at most once a minute (:data:`TOUCH_EVERY`), not on every
request, so a busy ward screen costs no write per click. It therefore lags the last
request by under a minute, and a session counts as idle only once ``idle`` plus that
minute has passed: never earlier than the page's own countdown says, at most a minute
later.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.security.tables import User, WebSession

TOUCH_EVERY = timedelta(minutes=1)

# The one key of the session cookie that signs a browser in: the token naming its
# server-side session. The cookie also carries the CSRF token, and transiently the SSO
# sign-in state and flash messages, none of them a credential on its own.
SESSION_KEY = "sid"

Status = Literal["valid", "unknown", "revoked", "expired", "idle", "inactive"]


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session may idle, and how long it may live at all."""

    idle: timedelta
    max_age: timedelta

    @classmethod
    def of(cls, settings: Settings) -> SessionPolicy:
        return cls(
            idle=timedelta(minutes=settings.session_idle_minutes),
            max_age=timedelta(hours=settings.session_max_hours),
        )


@dataclass(frozen=True)
class SessionCheck:
    """What a session token is worth right now, with its row and user when known."""

    status: Status
    row: WebSession | None = None
    user: User | None = None

    @property
    def valid(self) -> bool:
        return self.status == "valid"


def token_digest(token: str) -> str:
    """The stored name of a session token (its SHA-256; the token is 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    session: Session, user: User, policy: SessionPolicy, now: datetime | None = None
) -> str:
    """Start a session for ``user``; returns the token for the cookie (shown only here).

    The user's sessions older than the absolute lifetime are deleted on the way: they can
    never be valid again, and sign-in and sign-out stay in the audit trail.
    """
    now = now or utcnow()
    session.execute(
        delete(WebSession).where(
            WebSession.user_id == user.id, WebSession.created_at < now - policy.max_age
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(id=token_digest(token), user_id=user.id, created_at=now, last_seen_at=now)
    )
    session.flush()
    return token


def check_session(
    session: Session, token: str, policy: SessionPolicy, now: datetime | None = None
) -> SessionCheck:
    """Whether ``token`` names a live session of an active user (one indexed read)."""
    now = now or utcnow()
    found = session.execute(
        select(WebSession, User)
        .join(User, User.id == WebSession.user_id)
        .where(WebSession.id == token_digest(token))
    ).first()
    if found is None:
        return SessionCheck("unknown")
    row, user = found
    status: Status = "valid"
    if row.revoked_at is not None:
        status = "revoked"
    elif now - row.created_at >= policy.max_age:
        status = "expired"
    elif now - row.last_seen_at >= policy.idle + TOUCH_EVERY:
        status = "idle"
    elif not user.active:
        status = "inactive"
    return SessionCheck(status, row, user)


def touch(row: WebSession, now: datetime | None = None) -> bool:
    """Record user activity, at most once per :data:`TOUCH_EVERY`; True when written."""
    now = now or utcnow()
    if now - row.last_seen_at < TOUCH_EVERY:
        return False
    row.last_seen_at = now
    return True


def end_session(row: WebSession, reason: str, now: datetime | None = None) -> None:
    """Revoke one session (idempotent: the first reason stays)."""
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
        row.revoked_reason = reason[:32]


def end_token(session: Session, token: str, reason: str, now: datetime | None = None) -> None:
    """Revoke the session ``token`` names, if any (sign-out)."""
    row = session.get(WebSession, token_digest(token))
    if row is not None:
        end_session(row, reason, now)
