"""Users and API keys: creation, verification, lock-out.

API keys look like ``vc_<prefix>_<secret>``: the prefix finds the row, and only the
SHA-256 of the high-entropy secret is stored (a slow hash buys nothing for 256 random
bits and would sit on every API request). Passwords use Argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.errors import Conflict, InvalidInput
from vitalcast.security.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
from vitalcast.security.permissions import ROLES
from vitalcast.security.tables import ApiKey, User
from vitalcast.text_input import unit_name_problem, unstorable

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
MAX_USERNAME_CHARS = 64  # users.username
# Usernames of accounts provisioned by single sign-on (security.oidc): "oidc:<sub>".
SSO_USERNAME_PREFIX = "oidc:"
MAX_KEY_NAME_CHARS = 100  # api_keys.name
MAX_KEY_DAYS = 3650


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


def _refuse(what: str, problems: list[dict[str, Any]]) -> InvalidInput:
    """Every problem in ``details``, the first with its field in the message too: the CLI
    prints only the message."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return InvalidInput(f"{what}: {first['loc'][-1]}: {first['msg']}{more}", details=problems)


def username_problems(username: str) -> list[dict[str, Any]]:
    """What is wrong with ``username`` as a new user's name (its column holds 64
    characters; sign-in strips what is typed, so surrounding spaces could never sign in)."""
    loc = ["username"]
    if not username.strip():
        return [{"loc": loc, "msg": "required: 1 to 64 characters"}]
    if len(username) > MAX_USERNAME_CHARS:
        return [{"loc": loc, "msg": f"at most {MAX_USERNAME_CHARS} characters"}]
    why = unstorable(username)
    if why:
        return [{"loc": loc, "msg": why}]
    if username != username.strip():
        return [{"loc": loc, "msg": "must not start or end with a space"}]
    if any(unicodedata.category(c) == "Cc" for c in username):
        return [{"loc": loc, "msg": "must not contain control characters"}]
    if username.startswith(SSO_USERNAME_PREFIX):
        # Single sign-on finds its accounts by this name: a local account made with it
        # would be taken over by (or take over) the identity provider's user.
        return [{"loc": loc, "msg": f"{SSO_USERNAME_PREFIX!r} names are single sign-on accounts"}]
    return []


def units_problems(units: Sequence[str] | None) -> list[dict[str, Any]]:
    """What is wrong with a user's units: each a unit name as ``VITALCAST_STAY_UNITS``
    takes them (1 to 64 characters, not blank)."""
    problems = []
    for n, unit in enumerate(units or (), start=1):
        why = unit_name_problem(unit)
        if why:
            problems.append({"loc": ["units"], "msg": f"unit {n}: {why}"})
    return problems


def create_user(
    session: Session, *, username: str, password: str, role: str, units: list[str] | None = None
) -> User:
    """Create a user with an Argon2id password hash.

    The one place users are created with a password (the admin page, ``vitalcast users
    create``, the demo), so its rules hold for all of them.

    Raises:
        InvalidInput: a username or unit outside the rules (:func:`username_problems`,
            :func:`units_problems`), an unknown role or a password shorter than the
            minimum; every problem at once.
        Conflict: the username is taken.
    """
    problems = username_problems(username) + units_problems(units)
    if role not in ROLES:
        problems.append({"loc": ["role"], "msg": f"one of {', '.join(ROLES)}"})
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(
            {"loc": ["password"], "msg": f"too short: at least {MIN_PASSWORD_LENGTH} characters"}
        )
    elif unstorable(password):
        # Only its hash is stored, but a lone surrogate has no UTF-8 to hash, and the
        # sign-in form refuses a NUL: either would make a password nobody can type.
        problems.append({"loc": ["password"], "msg": str(unstorable(password))})
    if problems:
        raise _refuse("the user cannot be created", problems)
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
    """Check a password, counting failures and locking the account after repeated ones.

    Each attempt is counted before its password is checked, in a transaction of its own
    that commits at once (:func:`_claim_attempt`): counted on the request's transaction
    instead, concurrent attempts all read the same count and each wrote it plus one, so
    an attacker sending guesses in parallel was never locked out. Every path costs one
    password hash, so the answer's timing does not tell whether the account exists, is
    disabled or is locked.
    """
    user = session.scalar(select(User).where(User.username == username))
    now = utcnow()
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same cost whether or not the user exists
        return LoginResult(None, "unknown")
    if not user.active:
        verify_password(_DUMMY_HASH, password)
        return LoginResult(None, "inactive")
    if not _claim_attempt(session, user.id, now):
        verify_password(_DUMMY_HASH, password)
        return LoginResult(None, "locked")
    if not verify_password(user.password_hash, password):
        _count_failure(session, user.id, now)
        return LoginResult(None, "wrong_password")
    # An UPDATE, not attribute assignment: the count was raised by another transaction,
    # so the loaded object still holds the old value and would see nothing to write.
    session.execute(
        update(User)
        .where(User.id == user.id)
        .values(failed_logins=0, locked_until=None, last_login_at=now)
    )
    session.refresh(user)
    return LoginResult(user, None)


def _claim_attempt(session: Session, user_id: int, now: datetime) -> bool:
    """Count one sign-in attempt against ``user_id``; False when the account is locked.

    The count is raised by one atomic UPDATE in its own short transaction, committed
    before the password is checked: whatever the concurrency, at most
    ``MAX_FAILED_LOGINS`` attempts are let through before the lock-out, and the row is
    not held locked while the slow hash runs. An attempt past the limit locks the
    account. A successful sign-in resets the count; a failed one leaves it counted.
    """
    not_locked = or_(User.locked_until.is_(None), User.locked_until <= now)
    with Session(session.get_bind()) as own, own.begin():
        count = own.scalar(
            update(User)
            .where(User.id == user_id, not_locked)
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        )
        if count is None:
            return False  # locked
        if count > MAX_FAILED_LOGINS:
            _lock(own, user_id, now)
            return False
    return True


def _count_failure(session: Session, user_id: int, now: datetime) -> None:
    """A wrong password: the attempt is already counted; the last allowed one locks."""
    with Session(session.get_bind()) as own, own.begin():
        count = own.scalar(select(User.failed_logins).where(User.id == user_id))
        if count is not None and count >= MAX_FAILED_LOGINS:
            _lock(own, user_id, now)


def _lock(session: Session, user_id: int, now: datetime) -> None:
    session.execute(
        update(User).where(User.id == user_id).values(locked_until=now + LOCKOUT, failed_logins=0)
    )


_DUMMY_HASH = hash_password(secrets.token_hex(16))


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session,
    *,
    name: str,
    role: str,
    expires_in_days: int | None = None,
    created_by: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full key, which is never shown again.

    The one place keys are created (the admin page, ``vitalcast apikeys create``), so its
    rules hold for both.

    Raises:
        InvalidInput: a name that is not 1 to 100 characters of text, an unknown role, or
            a lifetime outside 1 to 3650 days; every problem at once.
    """
    problems: list[dict[str, Any]] = []
    if not name.strip() or len(name) > MAX_KEY_NAME_CHARS:
        problems.append({"loc": ["name"], "msg": f"required: 1 to {MAX_KEY_NAME_CHARS} characters"})
    elif unstorable(name):
        problems.append({"loc": ["name"], "msg": str(unstorable(name))})
    if role not in ROLES:
        problems.append({"loc": ["role"], "msg": f"one of {', '.join(ROLES)}"})
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_KEY_DAYS:
        problems.append({"loc": ["days"], "msg": f"a lifetime of 1 to {MAX_KEY_DAYS} days"})
    if problems:
        raise _refuse("the API key cannot be created", problems)
    expires_at = None if expires_in_days is None else utcnow() + timedelta(days=expires_in_days)
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
