"""``vitalcast synth``: generate the synthetic ICU cohort into the store or into files."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy.orm import Session

from vitalcast.cli import get_settings
from vitalcast.clinical.records import RecordBatch
from vitalcast.db import create_db_engine, upgrade_database
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.synth.cohort import FIRST_RECORD_ID, generate_cohort
from vitalcast.synth.service import next_record_id, store_cohort


@click.command("synth")
@click.option(
    "--patients",
    "n_current",
    type=click.IntRange(min=0),
    required=True,
    help="Current (open) ICU stays, admitted 1-96 h ago: they fill the ward page.",
)
@click.option(
    "--historic",
    "n_historic",
    type=click.IntRange(min=0),
    default=None,
    help="Completed stays with a known outcome, for training. [default: 2.5 × --patients]",
)
@click.option("--seed", type=int, default=2012, show_default=True, help="Random seed.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["db", "physionet", "fhir"]),
    default="db",
    show_default=True,
    help="db: into the configured database; physionet / fhir: files under --out.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder for --format physionet or fhir.",
)
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Reference time in UTC (default: the current time); with --seed it fixes the data.",
)
@click.pass_context
def synth(
    ctx: click.Context,
    n_current: int,
    n_historic: int | None,
    seed: int,
    fmt: str,
    out: Path | None,
    now: datetime | None,
) -> None:
    """Generate synthetic adult ICU stays in the PhysioNet 2012 style.

    The same --seed and --now give the same stays. With --format db the stays are added
    to the configured database, numbered after any stays an earlier run stored there.
    Identifiers (names, MRNs, contact details) are invented and belong to nobody.
    """
    if fmt != "db" and out is None:
        raise click.UsageError(f"--format {fmt} needs --out DIR")
    historic = round(2.5 * n_current) if n_historic is None else n_historic
    ref_time = (now.replace(tzinfo=UTC) if now else datetime.now(UTC)).replace(
        second=0, microsecond=0
    )
    if fmt == "db":
        _into_database(ctx, n_current, historic, seed, ref_time)
        return
    assert out is not None
    batch = _generate(n_current, historic, seed, ref_time, FIRST_RECORD_ID)
    if fmt == "physionet":
        from vitalcast.synth.physionet import write_physionet

        written = write_physionet(batch, out)
        click.echo(
            f"wrote {written.records} record files and {written.outcomes} outcomes to {out}"
            f" ({written.skipped} observations without a PhysioNet parameter skipped)"
        )
        return
    if fmt == "fhir":
        from vitalcast.synth.fhir import write_fhir_ndjson

        counts = write_fhir_ndjson(batch, out)
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        click.echo(f"wrote {summary} to {out}")
        return


def _generate(n_current: int, historic: int, seed: int, now: datetime, first: int) -> RecordBatch:
    started = time.perf_counter()
    batch = generate_cohort(
        n_current=n_current, n_historic=historic, seed=seed, now=now, first_record_id=first
    )
    click.echo(
        f"generated {n_current} current and {historic} historic stays,"
        f" {len(batch.observations)} observations in {time.perf_counter() - started:.1f} s"
    )
    return batch


def _into_database(
    ctx: click.Context, n_current: int, historic: int, seed: int, now: datetime
) -> None:
    """Add the cohort to the configured database, numbered after any earlier cohort."""
    settings = get_settings(ctx)
    cipher = cipher_from_settings(settings)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with Session(engine, expire_on_commit=False) as session:
            first = next_record_id(session)
            session.rollback()  # end the read transaction before the chunked writes
            batch = _generate(n_current, historic, seed, now, first)
            started = time.perf_counter()
            report = store_cohort(
                session=session,
                batch=batch,
                cipher=cipher,
                now=now,
                location=f"synth seed={seed}",
            )
    finally:
        engine.dispose()
    click.echo(report.render())
    click.echo(f"stored in {time.perf_counter() - started:.1f} s")
