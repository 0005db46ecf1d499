"""``vitalcast keys ...``: field-encryption keys (status, new key, rotation)."""

from __future__ import annotations

import base64
import os

import click

from vitalcast.db.session import create_db_engine, make_session_factory
from vitalcast.security.crypto import KEY_ID_PATTERN, cipher_from_settings
from vitalcast.security.identifiers import key_usage, quarantine_key_usage, rotate_identifiers


@click.group("keys")
def keys_group() -> None:
    """Field-encryption keys of direct identifiers (AES-256-GCM)."""


@keys_group.command("generate")
@click.argument("key_id")
def keys_generate(key_id: str) -> None:
    """Print a new `KEY_ID:base64` key to put first in VITALCAST_FIELD_KEY."""
    if not KEY_ID_PATTERN.match(key_id):
        # The keyring refuses such an id at start: every process would stop on it.
        raise click.BadParameter(
            "ids are 1-32 letters, digits, '.', '_' or '-'", param_hint="KEY_ID"
        )
    click.echo(f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}")


@keys_group.command("status")
@click.pass_context
def keys_status(ctx: click.Context) -> None:
    """How many patients and quarantined raw items each key id encrypts."""
    from vitalcast.cli import get_settings

    settings = get_settings(ctx)
    cipher = cipher_from_settings(settings)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            usage = key_usage(session)
            quarantined = quarantine_key_usage(session)
    finally:
        engine.dispose()
    click.echo(f"current key: {cipher.current}")
    for what, counts in (("patients", usage), ("quarantined raw items", quarantined)):
        for key_id, count in sorted(counts.items()):
            known = "" if key_id in cipher.keys else "  (NOT IN KEYRING: cannot decrypt)"
            click.echo(f"{key_id}: {count} {what}{known}")


@keys_group.command("rotate")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.pass_context
def keys_rotate(ctx: click.Context, batch_size: int) -> None:
    """Re-encrypt identifiers and quarantined raw items under the current (first) key."""
    from vitalcast.cli import get_settings

    settings = get_settings(ctx)
    cipher = cipher_from_settings(settings)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        report = rotate_identifiers(make_session_factory(engine), cipher, batch_size=batch_size)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(
        f"re-encrypted {report.rotated} patients in {report.batches} batches under key"
        f" {report.current_key}; before: {report.before or 'no encrypted rows'}"
    )
    click.echo(
        f"re-encrypted {report.quarantine_rotated} quarantined raw items;"
        f" before: {report.quarantine_before or 'no encrypted rows'}"
    )
    if report.remaining:
        raise click.ClickException(
            f"{report.remaining} rows were locked by other writers; run `keys rotate` again"
        )
    old = sorted(k for k in cipher.keys if k != cipher.current)
    if old:
        click.echo(f"no row uses {', '.join(old)} any more; remove it from VITALCAST_FIELD_KEY")
