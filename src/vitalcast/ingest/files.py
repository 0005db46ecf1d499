"""Use cases for file sources: read a file set, store it in one unit of work, report.

Each function reads its whole input before writing anything, so an input that cannot be
read (missing, truncated archive, not UTF-8, wrong format) raises
:class:`~vitalcast.errors.IngestError` with nothing stored. The caller owns the
transaction and commits once: a database error part-way rolls the whole input back.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from vitalcast.errors import IngestError
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.service import store_batch
from vitalcast.ingest.sources import physionet
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)


def ingest_physionet2012(
    session: Session,
    path: Path,
    *,
    outcomes: Path | None,
    cipher: FieldCipher,
    now: datetime | None = None,
    records_per_batch: int = 500,
) -> IngestReport:
    """Store a PhysioNet 2012 set (folder or .tar.gz) and, optionally, its Outcomes file.

    Raises:
        IngestError: the set or the Outcomes file cannot be read.
    """
    try:
        records = list(physionet.iter_records(path))
        outcome_batch = physionet.read_outcomes(outcomes) if outcomes else None
    except physionet.PhysionetFormatError as exc:
        raise IngestError(str(exc)) from None
    if not records:
        raise IngestError(f"{path.name}: no PhysioNet 2012 record files (*.txt) found")
    location = path.name + (f" + {outcomes.name}" if outcomes else "")
    report = IngestReport(source=physionet.SOURCE, location=location)
    try:
        for n, batch in enumerate(
            physionet.iter_batches(records, outcome_batch, records_per_batch=records_per_batch)
        ):
            part = store_batch(
                session,
                batch,
                source=physionet.SOURCE,
                location=f"{location} [batch {n + 1}]",
                cipher=cipher,
                now=now,
            )
            report.merge(part)
            report.run_id = report.run_id or part.run_id
    except physionet.PhysionetFormatError as exc:
        raise IngestError(str(exc)) from None
    return report
