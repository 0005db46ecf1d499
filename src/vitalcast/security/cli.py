"""``vitalcast users ...`` and ``vitalcast apikeys ...``: credentials."""

from __future__ import annotations

import sys
from datetime import timedelta

import click
from sqlalchemy.orm import Session, sessionmaker

from vitalcast.db.base import utcnow
from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.security import audit
from vitalcast.security.permissions import ROLES
from vitalcast.security.service import create_api_key, create_user


def _sessions(ctx: click.Context) -> sessionmaker[Session]:
    from vitalcast.cli import get_settings

    engine = create_db_engine(get_settings(ctx).resolved_database_url)
    return make_session_factory(engine)


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
    with session_scope(_sessions(ctx)) as session:
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
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    with session_scope(_sessions(ctx)) as session:
        row, key = create_api_key(session, name=name, role=role, expires_at=expires)
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
