"""``vitalcast db ...``: schema management."""

from __future__ import annotations

import click

from vitalcast.db.session import create_db_engine, upgrade_database


@click.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the latest revision."""
    from vitalcast.cli import get_settings

    settings = get_settings(ctx)
    from vitalcast.security.crypto import cipher_from_settings

    # Revision 0006 encrypts existing quarantined raw items with the field key.
    keys = settings.field_key is not None and settings.hmac_key is not None
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine, cipher=cipher_from_settings(settings) if keys else None)
    engine.dispose()
    click.echo(f"database schema is up to date ({engine.dialect.name})")
