"""``vitalcast export --deidentified OUT``: a Safe Harbor research/training extract."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import cast

import click

from vitalcast.db.session import create_db_engine, make_session_factory, session_scope
from vitalcast.errors import ConfigError
from vitalcast.security.deid import DateMode, export_deidentified


@click.command("export")
@click.option(
    "--deidentified",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Write a de-identified extract (CSV files + manifest.json) into this new folder."
    " Identified exports are not offered.",
)
@click.option(
    "--dates",
    type=click.Choice(["year", "shift"]),
    default="year",
    show_default=True,
    help="year: Safe Harbor (years and intervals only). shift: per-patient secret date"
    " offset (needs an expert determination or a limited data set agreement).",
)
@click.option(
    "--project",
    default="default",
    show_default=True,
    help="Research ids differ per project, so extracts of two projects cannot be joined.",
)
@click.pass_context
def export_command(ctx: click.Context, out: Path, dates: str, project: str) -> None:
    """Export the store without the 18 HIPAA identifiers (45 CFR 164.514(b)(2))."""
    from vitalcast.cli import get_settings

    settings = get_settings(ctx)
    if settings.hmac_key is None:
        raise ConfigError("VITALCAST_HMAC_KEY is required: it keys research ids and date shifts")
    key = base64.b64decode(settings.hmac_key.get_secret_value())
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            report = export_deidentified(
                session, out=out, hmac_key=key, dates=cast(DateMode, dates), project=project
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    rows = ", ".join(f"{n} {name.removesuffix('.csv')}" for name, n in report.rows.items())
    click.echo(f"de-identified extract ({dates} dates) in {out}: {rows}")
