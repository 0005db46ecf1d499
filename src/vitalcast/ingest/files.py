"""Use cases for file sources: read a file set, store it in one unit of work, report.

Each function reads its whole input before writing anything, so an input that cannot be
read (missing, truncated archive, not UTF-8, wrong format) raises
:class:`~vitalcast.errors.IngestError` with nothing stored. The caller owns the
transaction and commits once: a database error part-way rolls the whole input back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from vitalcast.errors import IngestError
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.service import audit_ingest, store_batch
from vitalcast.ingest.sources import physionet
from vitalcast.ingest.sources._csv_file import CsvFile
from vitalcast.security import audit
from vitalcast.security.crypto import FieldCipher

logger = logging.getLogger(__name__)

T = TypeVar("T")


def ingest_physionet2012(
    session: Session,
    path: Path,
    *,
    outcomes: Path | None,
    cipher: FieldCipher,
    now: datetime | None = None,
    records_per_batch: int = 500,
    agent: audit.Agent = audit.SYSTEM,
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
    batches = physionet.iter_batches(records, outcome_batch, records_per_batch=records_per_batch)
    try:
        for n, batch in enumerate(prefetch(batches)):
            part = store_batch(
                session,
                batch,
                source=physionet.SOURCE,
                location=f"{location} [batch {n + 1}]",
                cipher=cipher,
                now=now,
                audited=False,
            )
            report.merge(part)
            report.run_id = report.run_id or part.run_id
    except physionet.PhysionetFormatError as exc:
        raise IngestError(str(exc)) from None
    # One event for the whole set, at the end: the audit chain's lock is then held only
    # until the caller's commit, not through the minute-long load.
    audit_ingest(session, report, agent)
    return report


def prefetch(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a worker thread while the caller handles this one.

    Parsing is pure Python while storing mostly waits for PostgreSQL (psycopg releases
    the GIL while the server inserts), so on two cores parsing batch n+1 overlaps the
    database work on batch n. Items are produced strictly in order, one thread only.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-parse") as pool:
        future = pool.submit(next, items, None)
        while True:
            item = future.result()
            if item is None:
                return
            future = pool.submit(next, items, None)
            yield item


def ingest_csv(
    session: Session,
    path: Path,
    *,
    profile: str,
    cipher: FieldCipher,
    now: datetime | None = None,
    agent: audit.Agent = audit.SYSTEM,
) -> IngestReport:
    """Store a CSV file (plain or compressed) mapped by a profile.

    Raises:
        IngestError: unknown profile, unreadable file, not UTF-8, or columns missing.
    """
    from vitalcast.ingest.sources import csv as csv_source

    try:
        mapping = csv_source.load_profile(profile)
    except csv_source.ProfileError as exc:
        raise IngestError(str(exc)) from None
    rows = read_csv_rows(path, mapping)
    batch = csv_source.parse_rows(rows.rows, mapping, name=path.name)
    report = store_batch(
        session,
        batch,
        source=mapping.source,
        location=path.name,
        cipher=cipher,
        now=now,
        agent=agent,
    )
    report.ignored_columns = csv_source.unknown_columns(rows.columns, mapping)
    return report


def read_csv_rows(path: Path, profile: Any) -> CsvFile:
    """The file's header and rows as text cells (``None`` where missing), or IngestError."""
    from vitalcast.ingest.sources._csv_file import DEFAULT_NA, CsvReadError, read_csv_file

    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    na = frozenset(profile.read.na_values) | (DEFAULT_NA if profile.read.keep_default_na else set())
    try:
        table = read_csv_file(path, sep=profile.read.sep, na_values=na)
    except CsvReadError as exc:
        raise IngestError(f"{path.name}: {exc}") from None
    missing = sorted(profile.required_columns() - set(table.columns))
    if missing:
        raise IngestError(
            f"{path.name}: columns {', '.join(missing)} required by profile"
            f" {profile.name!r} are missing"
        )
    widths = {len(row.cells) + len(row.extra) for row in table.rows if row.extra}
    if table.rows and all(row.extra for row in table.rows):
        # Every row longer than the header: the export's layout (a delimiter after the
        # last field of each row), not a stray row; storing nothing is the honest answer.
        raise IngestError(
            f"{path.name}: every row has more fields than the header"
            f" ({', '.join(map(str, sorted(widths)))} against {len(table.columns)};"
            f" first at line {table.rows[0].line}), a delimiter at the end of each row?"
        )
    return table


def ingest_mimic_iv(
    session: Session,
    folder: Path,
    *,
    cipher: FieldCipher,
    now: datetime | None = None,
    agent: audit.Agent = audit.SYSTEM,
) -> IngestReport:
    """Store a MIMIC-IV export folder (hosp/, icu/).

    Raises:
        IngestError: the folder or one of its tables cannot be read.
    """
    from vitalcast.ingest.sources import mimic

    try:
        tables = mimic.read_export(folder)
    except mimic.MimicFormatError as exc:
        raise IngestError(str(exc)) from None
    batch = mimic.parse_export(tables)
    return store_batch(
        session,
        batch,
        source=mimic.SOURCE,
        location=folder.name,
        cipher=cipher,
        now=now,
        agent=agent,
    )


def ingest_dicom(
    session: Session,
    paths: list[Path],
    *,
    cipher: FieldCipher,
    assume_tz: tzinfo = UTC,
    now: datetime | None = None,
    agent: audit.Agent = audit.SYSTEM,
) -> IngestReport:
    """Store the studies of DICOM files/folders, attached to patients by MRN hash.

    Raises:
        IngestError: a path is missing, or no file is readable DICOM.
    """
    from sqlalchemy import select

    from vitalcast.clinical.tables import Patient
    from vitalcast.ingest.sources import dicom

    try:
        files = dicom.find_files(paths)
    except dicom.DicomInputError as exc:
        raise IngestError(str(exc)) from None
    if not files:
        raise IngestError("no DICOM files found in " + ", ".join(p.name for p in paths))
    batch = dicom.parse_files(files, cipher=cipher, assume_tz=assume_tz)
    if sum(r.reason_code in dicom.NOT_A_STUDY for r in batch.rejected) == len(files):
        raise IngestError("no readable DICOM file among " + ", ".join(p.name for p in paths[:5]))
    hashes = sorted(
        {s.patient_ref.removeprefix("mrn-hmac:") for s in batch.imaging_studies} - {"no-patient-id"}
    )
    known = {
        f"mrn-hmac:{mac}": pid
        for mac, pid in session.execute(
            select(Patient.mrn_hmac, Patient.id).where(Patient.mrn_hmac.in_(hashes))
        )
    }
    location = ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    return store_batch(
        session,
        batch,
        source=dicom.SOURCE,
        location=location,
        cipher=cipher,
        now=now,
        known_patients=known,
        agent=agent,
    )
