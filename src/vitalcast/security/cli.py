"""``vitalcast users ...`` and ``vitalcast apikeys ...``: credentials."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.db.base import utcnow
from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.security import audit
from vitalcast.security.permissions import ROLES
from vitalcast.security.service import create_api_key, create_user
from vitalcast.security.tables import ApiKey, User


@contextmanager
def _session(ctx: click.Context) -> Iterator[Session]:
    """One unit of work on a fresh engine, disposed of afterwards (no pooled leftovers)."""
    from vitalcast.cli import get_settings

    engine = create_db_engine(get_settings(ctx).resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@click.group("users")
def users_group() -> None:
    """Manage people who sign in to the web UI."""


@users_group.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role of the new user.")
@click.option("--unit", "units", multiple=True, help="Restrict to these units (repeatable).")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@click.pass_context
def users_create(
    ctx: click.Context, username: str, role: str, units: tuple[str, ...], password_stdin: bool
) -> None:
    """Create a user (the password is asked for, never taken from the command line)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _session(ctx) as session:
        user = create_user(
            session, username=username, password=password, role=role, units=list(units) or None
        )
        audit.record(
            session,
            audit.Event(
                "user.created",
                "C",
                actor="cli",
                resource=f"User/{user.id}",
                details={"username": username, "role": role},
            ),
        )
    click.echo(f"created user {username} with role {role}")


@click.group("apikeys")
def apikeys_group() -> None:
    """Manage API keys of integrations (EHR, devices, scripts)."""


@apikeys_group.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role the key acts as.")
@click.option("--name", default="integration", show_default=True, help="What the key is for.")
@click.option(
    "--expires-days",
    type=click.IntRange(min=1),
    default=None,
    help="Expire the key after this many days (default: never).",
)
@click.pass_context
def apikeys_create(ctx: click.Context, role: str, name: str, expires_days: int | None) -> None:
    """Create an API key; the key is printed once, on the last line."""
    with _session(ctx) as session:
        row, key = create_api_key(
            session, name=name, role=role, expires_in_days=expires_days
        )  # checks the name and the lifetime as the admin page does
        audit.record(
            session,
            audit.Event(
                "apikey.created",
                "C",
                actor="cli",
                resource=f"ApiKey/{row.id}",
                details={"name": name, "role": role},
            ),
        )
    click.echo(f"created API key {row.prefix} ({name}, role {role}); it is shown only once:")
    click.echo(key)


@apikeys_group.command("revoke")
@click.argument("prefix")
@click.pass_context
def apikeys_revoke(ctx: click.Context, prefix: str) -> None:
    """Revoke the key whose prefix is PREFIX (the part after `vc_`); effective at once."""
    with _session(ctx) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            raise click.ClickException(f"no API key with prefix {prefix}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(
                session,
                audit.Event("apikey.revoked", "U", actor="cli", resource=f"ApiKey/{row.id}"),
            )
    click.echo(f"revoked API key {prefix}")


@users_group.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@click.pass_context
def users_set_role(ctx: click.Context, username: str, role: str) -> None:
    """Change a user's role (a permission change, audited)."""
    with _session(ctx) as session:
        user = _user_or_fail(session, username)
        before = user.role
        user.role = role
        audit.record(
            session,
            audit.Event(
                "user.role_changed",
                "U",
                actor="cli",
                resource=f"User/{user.id}",
                details={"username": username, "from": before, "to": role},
            ),
        )
    click.echo(f"{username}: role {before} -> {role}")


@users_group.command("disable")
@click.argument("username")
@click.pass_context
def users_disable(ctx: click.Context, username: str) -> None:
    """Disable a user: sign-in refused, open sessions end at their next request."""
    with _session(ctx) as session:
        user = _user_or_fail(session, username)
        user.active = False
        audit.record(
            session,
            audit.Event(
                "user.disabled",
                "U",
                actor="cli",
                resource=f"User/{user.id}",
                details={"username": username},
            ),
        )
    click.echo(f"disabled {username}")


def _user_or_fail(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise click.ClickException(f"no user {username}")
    return user
