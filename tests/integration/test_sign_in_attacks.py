"""Attacks on password sign-in: parallel guessing, and what the answer's timing tells."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tests.conftest import Credentials
from vitalcast.db.base import utcnow
from vitalcast.db.session import session_scope
from vitalcast.security.service import MAX_FAILED_LOGINS, authenticate
from vitalcast.security.tables import User
from vitalcast.serving.state import get_state


def _attempt_in_parallel(app: Flask, username: str, password: str, n: int) -> list[str | None]:
    sessions = get_state(app).sessions
    barrier = threading.Barrier(n)
    reasons: list[str | None] = []

    def attempt() -> None:
        with session_scope(sessions) as session:
            barrier.wait()
            reasons.append(authenticate(session, username=username, password=password).reason)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reasons


def test_parallel_guesses_are_each_counted_and_lock_the_account(
    app: Flask, creds: Credentials
) -> None:
    """Guesses sent at once used to read the same failure count and each write it plus
    one, so the account never locked however many were sent. At most
    MAX_FAILED_LOGINS of them may reach the password check, then the account locks."""
    creds.user("paula", "nurse")
    reasons = _attempt_in_parallel(app, "paula", "wrong password!", MAX_FAILED_LOGINS + 2)
    assert reasons.count("wrong_password") <= MAX_FAILED_LOGINS
    assert reasons.count("locked") >= 2
    with get_state(app).sessions() as session:
        locked_until = session.scalar(select(User.locked_until).where(User.username == "paula"))
    assert locked_until is not None
    assert locked_until > utcnow()
    with session_scope(get_state(app).sessions) as session:
        # Even the right password is refused while locked.
        right = authenticate(session, username="paula", password=Credentials.PASSWORD)
    assert right.reason == "locked"


def test_a_successful_sign_in_resets_the_count(app: Flask, creds: Credentials) -> None:
    creds.user("rita", "nurse")
    sessions = get_state(app).sessions
    for _ in range(MAX_FAILED_LOGINS - 1):
        with session_scope(sessions) as session:
            assert authenticate(session, username="rita", password="nope nope nope").user is None
    with session_scope(sessions) as session:
        assert authenticate(session, username="rita", password=Credentials.PASSWORD).user
    with session_scope(sessions) as session:
        row = session.scalar(select(User).where(User.username == "rita"))
        assert row is not None
        assert row.failed_logins == 0
        assert row.locked_until is None
        assert row.last_login_at is not None
    # A full budget of failures again before the lock-out.
    for _ in range(MAX_FAILED_LOGINS - 1):
        with session_scope(sessions) as session:
            authenticate(session, username="rita", password="nope nope nope")
    with session_scope(sessions) as session:
        assert authenticate(session, username="rita", password=Credentials.PASSWORD).user


def _seconds(app: Flask, username: str) -> float:
    with session_scope(get_state(app).sessions) as session:
        started = time.perf_counter()
        authenticate(session, username=username, password="wrong password!")
        return time.perf_counter() - started


def test_locked_and_disabled_accounts_cost_a_password_hash_like_unknown_ones(
    app: Flask, creds: Credentials
) -> None:
    """A locked or disabled account used to answer without hashing the password, an
    order of magnitude faster than an unknown name: the timing told which names exist."""
    creds.user("lena", "nurse")
    creds.user("dave", "nurse")
    with session_scope(get_state(app).sessions) as session:
        session.execute(
            update(User)
            .where(User.username == "lena")
            .values(locked_until=utcnow() + timedelta(minutes=10))
        )
        session.execute(update(User).where(User.username == "dave").values(active=False))
    unknown = min(_seconds(app, "nobody-here") for _ in range(3))
    for name in ("lena", "dave"):
        fastest = min(_seconds(app, name) for _ in range(3))
        assert fastest > unknown / 3, (name, fastest, unknown)


def _sign_in_page(client: FlaskClient, username: str, password: str) -> str:
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 401
    return response.get_data(as_text=True)


def test_a_locked_account_answers_as_a_wrong_password_for_an_unknown_name(
    client: FlaskClient, creds: Credentials
) -> None:
    """The sign-in page used to say "This account is locked" only for accounts that
    exist: five wrong passwords told anyone whether a username was real."""
    creds.user("olga", "nurse")
    for _ in range(MAX_FAILED_LOGINS):
        _sign_in_page(client, "olga", "wrong password!")
    locked = _sign_in_page(client, "olga", Credentials.PASSWORD)
    unknown = _sign_in_page(client, "no-such-user", "wrong password!")
    assert "This account is locked" not in locked
    assert _message(locked) == _message(unknown)
    assert "locked" in _message(locked)


def _message(page: str) -> str:
    return page.split('role="alert"')[1].split("</")[0] if 'role="alert"' in page else page
