"""``vitalcast ingest ...``: read files of each source format into the store."""

from __future__ import annotations

import click

from vitalcast.ingest.cli_messages import ingest_fhir, ingest_hl7


@click.group()
def ingest() -> None:
    """Read clinical data files into the store (each prints an ingest report)."""


ingest.add_command(ingest_fhir)
ingest.add_command(ingest_hl7)
