"""``vitalcast ingest ...``: read files of each source format into the store.

Each command reads its whole input, stores it in one transaction, and prints the ingest
report (``--json`` for machines). Exit 0 when the input was read, even when items were
quarantined (they are in the report and the quarantine table); exit 2 with one line on
stderr when the input itself cannot be read (missing, truncated, not UTF-8, wrong format).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from sqlalchemy.orm import Session

from vitalcast.ingest.cli_messages import ingest_fhir, ingest_hl7
from vitalcast.ingest.report import IngestReport
from vitalcast.security.audit import CLI
from vitalcast.security.crypto import FieldCipher

Job = Callable[[Session, FieldCipher], IngestReport]

_JSON = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


@click.group()
def ingest() -> None:
    """Read clinical data files into the store (each prints an ingest report)."""


ingest.add_command(ingest_fhir)
ingest.add_command(ingest_hl7)


def _run(ctx: click.Context, job: Job, *, as_json: bool) -> None:
    """Open the store, run ``job`` in one unit of work, print its report."""
    from vitalcast.cli import get_settings
    from vitalcast.db import create_db_engine, upgrade_database
    from vitalcast.security.crypto import cipher_from_settings

    settings = get_settings(ctx)
    cipher = cipher_from_settings(settings)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine, cipher=cipher)
        with Session(engine, expire_on_commit=False) as session:
            report = job(session, cipher)
            session.commit()
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.render())


@ingest.command("physionet2012")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--outcomes",
    type=click.Path(path_type=Path),
    help="Outcomes-X.txt: in-hospital death and length of stay (also sets discharge times).",
)
@_JSON
@click.pass_context
def physionet2012(ctx: click.Context, path: Path, outcomes: Path | None, as_json: bool) -> None:
    """A PhysioNet 2012 challenge set: a folder or .tar.gz of per-stay text files."""
    from vitalcast.ingest.files import ingest_physionet2012

    _run(
        ctx,
        lambda s, c: ingest_physionet2012(s, path, outcomes=outcomes, cipher=c, agent=CLI),
        as_json=as_json,
    )


@ingest.command("csv")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--profile",
    required=True,
    help="Mapping profile: a shipped name (e.g. diabetes130) or a path to a YAML file.",
)
@_JSON
@click.pass_context
def csv_command(ctx: click.Context, path: Path, profile: str, as_json: bool) -> None:
    """A CSV file (plain or .gz) mapped to canonical records by a YAML profile."""
    from vitalcast.ingest.files import ingest_csv

    _run(
        ctx, lambda s, c: ingest_csv(s, path, profile=profile, cipher=c, agent=CLI), as_json=as_json
    )


@ingest.command("mimic-iv")
@click.argument("directory", type=click.Path(path_type=Path))
@_JSON
@click.pass_context
def mimic_iv(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """A MIMIC-IV export (hosp/ and icu/ CSV.gz; chartevents is optional)."""
    from vitalcast.ingest.files import ingest_mimic_iv

    _run(ctx, lambda s, c: ingest_mimic_iv(s, directory, cipher=c, agent=CLI), as_json=as_json)


@ingest.command("dicom")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--timezone",
    "tz_name",
    default="UTC",
    show_default=True,
    help="IANA time zone of study times in files without a Timezone Offset From UTC.",
)
@_JSON
@click.pass_context
def dicom(ctx: click.Context, paths: tuple[Path, ...], tz_name: str, as_json: bool) -> None:
    """DICOM files or folders: study headers only, never pixel data."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from vitalcast.errors import IngestError
    from vitalcast.ingest.files import ingest_dicom

    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise IngestError(f"--timezone {tz_name!r} is not an IANA time zone") from None
    _run(
        ctx,
        lambda s, c: ingest_dicom(s, list(paths), cipher=c, assume_tz=tz, agent=CLI),
        as_json=as_json,
    )


@ingest.command("quarantine")
@click.option("--source", help="Only items of this source (fhir, hl7v2, diabetes130, ...).")
@click.option("--reason", "reason_code", help="Only this reason code, e.g. out_of_range.")
@click.option("--run", "run_id", type=int, help="Only items of this ingest run.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option(
    "--raw",
    is_flag=True,
    help="Decrypt and show the raw items (they may hold identifiers): needs --as naming an"
    " active user whose role holds identifiers:read. Every item shown is audited.",
)
@click.option("--as", "username", help="The user on whose behalf the raw items are read.")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@click.pass_context
def quarantine_command(
    ctx: click.Context,
    source: str | None,
    reason_code: str | None,
    run_id: int | None,
    limit: int,
    raw: bool,
    username: str | None,
    as_json: bool,
) -> None:
    """Review quarantined items, newest first (the listing itself is audited)."""
    from sqlalchemy import select

    from vitalcast.cli import get_settings
    from vitalcast.db import create_db_engine
    from vitalcast.errors import Forbidden
    from vitalcast.ingest.quarantine import list_quarantine
    from vitalcast.security import audit
    from vitalcast.security.crypto import cipher_from_settings
    from vitalcast.security.tables import User

    if raw and not username:
        raise click.UsageError("--raw needs --as USERNAME (whose role must hold identifiers:read)")
    settings = get_settings(ctx)
    cipher = cipher_from_settings(settings) if raw else None
    engine = create_db_engine(settings.resolved_database_url)
    denied: str | None = None
    try:
        with Session(engine, expire_on_commit=False) as session:
            agent = audit.CLI
            if username:
                user = session.scalar(select(User).where(User.username == username))
                if user is None or not user.active:
                    raise click.ClickException(f"--as {username}: no active user of that name")
                agent = audit.Agent(f"user:{username}", role=user.role, client_addr="cli")
            try:
                rows = list_quarantine(
                    session,
                    agent=agent,
                    cipher=cipher,
                    reveal=raw,
                    source=source,
                    reason_code=reason_code,
                    run_id=run_id,
                    limit=limit,
                )
            except Forbidden as exc:
                denied, rows = str(exc), []
            session.commit()  # the audit events, the refusal included
    finally:
        engine.dispose()
    if denied:
        raise click.ClickException(denied)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        click.echo(
            f"#{r.id} {r.received_at:%Y-%m-%d %H:%M} {r.source} {r.reason_code}"
            f" at {r.location}: {r.reason}"
        )
        if r.raw_state == "shown":
            click.echo(f"    raw: {r.raw}")
        elif r.raw_state != "absent":
            click.echo(f"    raw: ({r.raw_state}: encrypted)")
    click.echo(f"{len(rows)} quarantined items", err=True)
