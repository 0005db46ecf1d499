"""Removing stored results that a newer version of them takes back.

A laboratory withdraws a result it sent (HL7 OBX-11 ``W`` wrong, ``D`` deleted, ``X``
cannot be obtained; a FHIR Observation ``entered-in-error`` or ``cancelled``): a
haemolysed potassium, a result filed on the wrong patient. Refused like any other
withdrawn result, the retraction left the stored value where it was, feeding the
patient's features and risk. Here a retraction removes the stored result of the same
source identity (its dedup key) when the stored version is older, and the stay is
rescored without it.

Nothing is lost: the removed row is kept in the quarantine (reason ``retracted``,
encrypted like every quarantined item) with where the retraction came from, and each
retraction writes an ``observation.retracted`` audit event naming the patient. A
retraction that removes nothing (no such result, or a stored version as new or newer) is
quarantined under the source's reason, saying which.

Every retraction of a stored patient is also remembered (``retracted_results``, the
newest version per result): a result arriving after its retraction (out of order), or
sent or imported again after it, is then quarantined as ``retracted`` instead of being
stored and scored (:func:`withheld`). A newer version of the result (a correction sent
after the retraction) is stored as any update is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vitalcast.clinical.records import ObservationRetraction
from vitalcast.clinical.tables import Observation, Patient, RetractedResult
from vitalcast.ingest._bulk import Row
from vitalcast.ingest._input_checks import Reject
from vitalcast.ingest._resolve import Resolver
from vitalcast.ingest.report import IngestReport, Retraction


class Archive(Protocol):
    """Keeps a removed row in the quarantine without counting it as an input item."""

    def __call__(
        self, where: str, reason_code: str, reason: str, raw: str, **extra: Any
    ) -> None: ...


def store_retractions(
    session: Session,
    records: Sequence[ObservationRetraction],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    archive: Archive,
) -> None:
    """Apply the batch's retractions, after its observations are stored (a result and
    its retraction in one batch: the newer one wins, as for any two versions)."""
    if not records:
        return
    counts = report.count("observation")
    resolver.load_patients({r.patient_ref for r in records})
    source = resolver.source
    for rec in records:
        patient_id = resolver.patients.get(rec.patient_ref)
        where = rec.source_ref or f"observation {rec.code}"
        if patient_id is None:
            reject(
                "observation",
                where,
                rec.reason_code,
                f"{rec.code}: {rec.reason}; no such patient is stored, so nothing was retracted",
                rec.raw,
                code=rec.code,
            )
            continue
        key = rec.dedup_key(source)
        _remember(session, patient_id, key, rec)
        removed = session.execute(
            delete(Observation)
            .where(
                Observation.patient_id == patient_id,
                Observation.dedup_key == key,
                or_(Observation.source_version.is_(None), Observation.source_version < rec.version),
            )
            .returning(
                Observation.encounter_id,
                Observation.code,
                Observation.value,
                Observation.value_text,
                Observation.unit,
                Observation.effective_at,
                Observation.source,
                Observation.source_ref,
                Observation.source_version,
            )
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if removed is None:
            kept = session.scalar(
                select(Observation.id).where(
                    Observation.patient_id == patient_id, Observation.dedup_key == key
                )
            )
            why = (
                "the stored result is of this version or newer, so it is kept"
                if kept is not None
                else "no such result is stored, so nothing was retracted; the retraction is"
                " kept, and that result, if it comes later, is quarantined, not used"
            )
            reject(
                "observation",
                where,
                rec.reason_code,
                f"{rec.code}: {rec.reason}; {why}",
                rec.raw,
                patient_id=patient_id,
                code=rec.code,
            )
            continue
        row = removed._mapping
        archive(
            row["source_ref"] or where,
            "retracted",
            f"{row['code']}: result taken back by {where} ({rec.reason}); removed from the"
            " store, kept here",
            json.dumps({k: _plain(v) for k, v in row.items()}),
            patient_id=patient_id,
            code=row["code"],
            effective_at=row["effective_at"],
        )
        counts.received += 1
        counts.stored += 1  # the retraction was applied: its effect is written
        public_id = session.scalar(select(Patient.public_id).where(Patient.id == patient_id))
        report.retracted.append(Retraction(where, rec.code, rec.reason_code, str(public_id)))
        report.patients.add(patient_id)
        if row["encounter_id"] is not None:
            report.touched_encounters.add(row["encounter_id"])  # rescored without it


def _plain(value: Any) -> Any:
    """A removed row's value as JSON holds it (times as ISO text)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def _remember(
    session: Session, patient_id: int, key: uuid.UUID, rec: ObservationRetraction
) -> None:
    """Keep the retraction's version for this result (the newest one wins), so that the
    result is not stored again if it arrives later or is sent again."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(RetractedResult).values(
        patient_id=patient_id, dedup_key=key, version=rec.version, code=rec.code
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["patient_id", "dedup_key"],
            set_={"version": stmt.excluded.version, "received_at": stmt.excluded.received_at},
            where=RetractedResult.version < stmt.excluded.version,
        )
    )


def withheld(session: Session, rows: Iterable[Row]) -> dict[tuple[int, uuid.UUID], str]:
    """(patient id, dedup key) -> the retraction's version, for the rows about to be
    stored whose result was taken back. One cheap query when none of their patients has
    a retracted result (nearly always); the caller compares versions."""
    wanted = {(row[0], row[9]) for row in rows}
    patients = {p for p, _ in wanted}
    if not patients or not session.scalar(
        select(exists().where(RetractedResult.patient_id.in_(patients)))
    ):
        return {}
    found = session.execute(
        select(
            RetractedResult.patient_id, RetractedResult.dedup_key, RetractedResult.version
        ).where(RetractedResult.patient_id.in_(patients))
    ).all()
    return {(p, k): v for p, k, v in found if (p, k) in wanted}
