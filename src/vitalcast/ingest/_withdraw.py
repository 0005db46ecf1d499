"""Withdrawing stored stays that a newer version says never were stays.

A FHIR Encounter with status ``entered-in-error`` or ``cancelled``, or an HL7 ADT^A11
(cancel admit/visit), says the stay was none. Refused for a new stay, it was also refused
for one already stored, which then stayed in progress: on the ward, rescored, shown to
clinicians as a stay the EHR says was an error or was cancelled.
Here a newer version of a stored stay withdraws it instead (``Encounter.withdrawn_at``):
it leaves every query for stays in progress (``Encounter.in_progress``) and the scored
population, keeps its data and history, and is reported and audited per patient.

Versions are ordered as every update is (:func:`vitalcast.ingest._resolve.is_newer`): an
equal or older version withdraws nothing (a duplicate), so a late old message never
withdraws a stay, and a withdrawal is final, so none resurrects one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vitalcast.clinical.records import EncounterWithdrawal
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.ingest._input_checks import Reject
from vitalcast.ingest._resolve import Resolver, chunks, is_newer
from vitalcast.ingest.report import IngestReport, KindCounts, Withdrawal

_NO_VERSION = (
    "; it has no version (FHIR meta.versionId or meta.lastUpdated, HL7 MSH-7) to order it"
    " after the stored stay, which is kept in progress"
)
_UNKNOWN = "; no such stay is stored, so nothing was withdrawn"


class Versioned(Protocol):
    @property
    def version(self) -> str | None: ...


V = TypeVar("V", bound=Versioned)


class StoredStay(NamedTuple):
    """What withdrawing or reopening a stored stay compares and reports."""

    version: str | None
    withdrawn_at: datetime | None
    discharged_at: datetime | None
    patient_public_id: str
    encounter_public_id: str


def store_withdrawals(
    session: Session,
    records: Sequence[EncounterWithdrawal],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
    now: datetime,
) -> None:
    """Withdraw the stored stays these records are newer versions of; quarantine the
    rest under their reason code (no such stay, or a version that cannot be ordered).

    Runs after the batch's stays are stored and updated, so that a withdrawal is compared
    with the newest version of its stay, in the store or in this batch.
    """
    if not records:
        return
    counts = report.count("encounter")
    resolver.load_encounters(r.ref for r in records)
    stored = stored_stays(session, (k[0] for r in records if (k := resolver.encounters.get(r.ref))))
    chosen: dict[int, EncounterWithdrawal] = {}
    for rec in records:
        where = rec.source_ref or rec.ref
        known = resolver.encounters.get(rec.ref)
        if known is None:
            reject("encounter", where, rec.reason_code, rec.reason + _UNKNOWN, rec)
            continue
        version, withdrawn_at = stored[known[0]][:2]
        if withdrawn_at is None and rec.version is None:
            reason = rec.reason + _NO_VERSION
            reject("encounter", where, rec.reason_code, reason, rec, patient_id=known[1])
            continue
        if withdrawn_at is not None:
            counts.received += 1
            counts.duplicates += 1  # already withdrawn
            continue
        keep_if_newer(chosen, known[0], rec, version, counts)
    write_changes(
        session,
        chosen,
        counts,
        lambda eid, rec: {
            "id": eid,
            "withdrawn_at": now,
            "withdrawn_reason": rec.reason_code,
            "source_version": rec.version,
        },
    )
    for eid, rec in chosen.items():
        stay = stored[eid]
        report.withdrawn.append(
            Withdrawal(
                rec.source_ref or rec.ref,
                rec.reason_code,
                stay.patient_public_id,
                stay.encounter_public_id,
            )
        )
    report.touched_encounters.difference_update(chosen)  # nothing left to rescore


def keep_if_newer(
    chosen: dict[int, V], eid: int, rec: V, stored_version: str | None, counts: KindCounts
) -> None:
    """Count ``rec`` (a change of stay ``eid``) and keep it in ``chosen`` when it is newer
    than the stored version and than the change kept so far from this batch; what is
    not newer, or superseded, is a duplicate."""
    counts.received += 1
    newest = chosen.get(eid)
    if not is_newer(rec.version, newest or stored_version):
        counts.duplicates += 1  # not newer than what is known: an old message
        return
    if newest is not None:
        counts.duplicates += 1  # superseded by a newer change in this batch
    chosen[eid] = rec


def write_changes(
    session: Session,
    chosen: dict[int, V],
    counts: KindCounts,
    change: Callable[[int, V], dict[str, Any]],
) -> None:
    """Update the chosen stays in one statement (``change`` gives each one's columns),
    counted as stored."""
    if chosen:
        session.execute(update(Encounter), [change(eid, rec) for eid, rec in chosen.items()])
    counts.stored += len(chosen)


def stored_stays(session: Session, ids: Iterable[int]) -> dict[int, StoredStay]:
    """Encounter id -> its :class:`StoredStay`, read in chunks."""
    found: dict[int, StoredStay] = {}
    for chunk in chunks(sorted(set(ids))):
        rows = session.execute(
            select(
                Encounter.id,
                Encounter.source_version,
                Encounter.withdrawn_at,
                Encounter.discharged_at,
                Patient.public_id,
                Encounter.public_id,
            )
            .join(Patient, Patient.id == Encounter.patient_id)
            .where(Encounter.id.in_(chunk))
        )
        found.update({eid: StoredStay(v, w, d, pub, enc) for eid, v, w, d, pub, enc in rows})
    return found
