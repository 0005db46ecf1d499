"""``vitalcast ingest ...``: read files of each source format into the store."""

from __future__ import annotations

import click


@click.group()
def ingest() -> None:
    """Read clinical data files into the store (each prints an ingest report)."""
