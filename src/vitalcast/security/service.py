"""Users and API keys: creation, verification, lock-out.

API keys look like ``vc_<prefix>_<secret>``: the prefix finds the row, and only the
SHA-256 of the high-entropy secret is stored (a slow hash buys nothing for 256 random
bits and would sit on every API request). Passwords use Argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.errors import Conflict, InvalidInput
from vitalcast.security.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
from vitalcast.security.permissions import ROLES
from vitalcast.security.tables import ApiKey, User

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a signed-in user or an API key."""

    kind: str  # "user" or "api_key"
    id: int
    name: str
    role: str
    units: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        return f"{self.kind}:{self.name}"


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(
            f"unknown role {role!r}",
            details=[{"loc": ["role"], "msg": f"one of {', '.join(ROLES)}"}],
        )


def create_user(
    session: Session, *, username: str, password: str, role: str, units: list[str] | None = None
) -> User:
    """Create a user with an Argon2id password hash.

    Raises:
        InvalidInput: unknown role or a password shorter than the minimum.
        Conflict: the username is taken.
    """
    _check_role(role)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters",
            details=[{"loc": ["password"], "msg": "too short"}],
        )
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role, units=units)
    session.add(user)
    session.flush()
    return user


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    reason: str | None  # why it failed: "unknown", "locked", "wrong_password", "inactive"


def authenticate(session: Session, *, username: str, password: str) -> LoginResult:
    """Check a password, counting failures and locking the account after repeated ones."""
    user = session.scalar(select(User).where(User.username == username))
    now = utcnow()
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same cost whether or not the user exists
        return LoginResult(None, "unknown")
    if not user.active:
        return LoginResult(None, "inactive")
    if user.locked_until is not None and user.locked_until > now:
        return LoginResult(None, "locked")
    if not verify_password(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
        return LoginResult(None, "wrong_password")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return LoginResult(user, None)


_DUMMY_HASH = hash_password(secrets.token_hex(16))


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session,
    *,
    name: str,
    role: str,
    expires_at: datetime | None = None,
    created_by: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full key, which is never shown again."""
    _check_role(role)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        prefix=prefix,
        secret_hash=_secret_hash(secret),
        name=name,
        role=role,
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, f"vc_{prefix}_{secret}"


def verify_api_key(session: Session, token: str) -> ApiKey | None:
    """The live key matching ``token``, or None (unknown, wrong secret, expired, revoked)."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "vc":
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or not hmac.compare_digest(row.secret_hash, _secret_hash(parts[2])):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row
