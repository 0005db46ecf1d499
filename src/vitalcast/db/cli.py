"""``vitalcast db ...``: schema management."""

from __future__ import annotations

import sys

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

    # Revision 0007 encrypts existing quarantined raw items with the field key.
    keys = settings.field_key is not None and settings.hmac_key is not None
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine, cipher=cipher_from_settings(settings) if keys else None)
    engine.dispose()
    click.echo(f"database schema is up to date ({engine.dialect.name})")


@db_group.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check references the database does not enforce: observations whose patient or
    encounter is missing (the fact table has no foreign keys, for ingest speed).

    Exits 1 and prints the counts if any are found.
    """
    from sqlalchemy import text

    from vitalcast.cli import get_settings

    settings = get_settings(ctx)
    engine = create_db_engine(settings.resolved_database_url)
    checks = {
        "observations without their patient": (
            "SELECT count(*) FROM observations o"
            " WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.id = o.patient_id)"
        ),
        "observations without their encounter": (
            "SELECT count(*) FROM observations o WHERE o.encounter_id IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM encounters e WHERE e.id = o.encounter_id)"
        ),
    }
    with engine.connect() as conn:
        found = {name: int(conn.scalar(text(sql)) or 0) for name, sql in checks.items()}
    engine.dispose()
    for name, count in found.items():
        click.echo(f"{name}: {count}")
    if any(found.values()):
        sys.exit(1)
