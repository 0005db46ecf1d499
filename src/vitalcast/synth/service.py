"""Store a synthetic cohort through the ingestion service, a chunk of stays per unit of work.

The generator's records enter the store exactly like any source's (``store_batch``): the
same validation, quarantine of the injected artefacts, encryption of identifiers and
ingest report. Chunking keeps each transaction and its memory small, and a failure loses
only the chunk in progress; re-running skips stored stays as duplicates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.records import ObservationRecord, OutcomeRecord, RecordBatch
from vitalcast.clinical.tables import Encounter
from vitalcast.ingest.report import IngestReport
from vitalcast.ingest.service import store_batch
from vitalcast.security.crypto import FieldCipher
from vitalcast.synth.cohort import FIRST_RECORD_ID, SOURCE

logger = logging.getLogger(__name__)


def next_record_id(session: Session) -> int:
    """The first free synthetic RecordID in the store, so a new cohort never reuses
    references (and MRNs) of stays stored by an earlier run."""
    refs = session.scalars(select(Encounter.source_ref).where(Encounter.source == SOURCE))
    numbers = [int(r.rsplit(":", 1)[-1]) for r in refs if r.rsplit(":", 1)[-1].isdigit()]
    return max(numbers, default=FIRST_RECORD_ID - 1) + 1


def split_by_stay(batch: RecordBatch, stays_per_chunk: int) -> Iterator[RecordBatch]:
    """Sub-batches of at most ``stays_per_chunk`` encounters, each with its own records.

    Every record of a stay (patient, encounter, observations, outcome) lands in the same
    chunk, so each chunk is self-contained for reference resolution.
    """
    if stays_per_chunk < 1:
        raise ValueError("stays_per_chunk must be at least 1")
    obs: dict[str | None, list[ObservationRecord]] = defaultdict(list)
    for o in batch.observations:
        obs[o.encounter_ref].append(o)
    outcomes: dict[str, list[OutcomeRecord]] = defaultdict(list)
    for out in batch.outcomes:
        outcomes[out.encounter_ref].append(out)
    patients = {p.ref: p for p in batch.patients}
    encounters = batch.encounters
    for start in range(0, len(encounters), stays_per_chunk):
        part = RecordBatch()
        for enc in encounters[start : start + stays_per_chunk]:
            if enc.patient_ref in patients:
                part.patients.append(patients.pop(enc.patient_ref))
            part.encounters.append(enc)
            part.observations.extend(obs.pop(enc.ref, []))
            part.outcomes.extend(outcomes.pop(enc.ref, []))
        part.received = (
            len(part.patients) + len(part.encounters) + len(part.observations) + len(part.outcomes)
        )
        yield part


def store_cohort(
    *,
    session: Session,
    batch: RecordBatch,
    cipher: FieldCipher,
    now: datetime,
    stays_per_chunk: int = 100,
    location: str = "synth",
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Store ``batch`` committing once per chunk of stays; return the merged report.

    Args:
        session: used for every chunk; committed after each, rolled back on failure.
        now: reference time for the store's "future observation" rule (generation time).
        progress: called with (stays stored so far, total stays) after each chunk.
    """
    total = IngestReport(source=SOURCE, location=location)
    done = 0
    for part in split_by_stay(batch, stays_per_chunk):
        try:
            report = store_batch(
                session, part, source=SOURCE, location=location, cipher=cipher, now=now
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        total.merge(report)
        done += len(part.encounters)
        if progress is not None:
            progress(done, len(batch.encounters))
    logger.info(
        "synthetic cohort stored",
        extra={"stays": done, "stored": total.stored, "quarantined": total.quarantined},
    )
    return total
