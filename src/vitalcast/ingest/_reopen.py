"""Reopening stored stays whose discharge the source cancelled (HL7 ADT^A13, or a newer
FHIR Encounter version saying the stay is going on).

An A13 says the discharge an A03 reported did not happen: the patient is still on the
ward. Refused as an unsupported message type, it left that stay shown as discharged and
no longer scored. Here an A13 newer than the stored version of the stay (the discharging
A03, or a later update) clears its discharge time: the stay is in progress again, is
rescored (it joins the report's touched stays), and is reported and audited per patient.

Versions are ordered as every update is (:func:`vitalcast.ingest._resolve.is_newer`): an
equal or older A13 changes nothing (a duplicate), so an A13 older than the A03 that
discharged the stay does not reopen it. The A13's version is kept on the stay
(``Encounter.discharge_cancelled_version``) so that a discharge no newer than it (the
same A03 resent or re-imported) does not discharge it again. A withdrawn stay is not
reopened (a withdrawal is final): such an A13 is quarantined, as is one for a stay never
stored or one without a version (it cannot be ordered after the discharge).

FHIR has no such message: an EHR that corrects a discharge sends the Encounter again,
newer, ``in-progress`` and without ``period.end``. That version is stored as any update
is; :func:`reopen_stated_stays` then clears the discharge it left standing (an update
keeps what a version leaves out), the same way and with the same report and audit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from vitalcast.clinical.records import DischargeCancellation, EncounterRecord
from vitalcast.clinical.tables import Encounter
from vitalcast.ingest._input_checks import Reject
from vitalcast.ingest._resolve import Resolver, is_newer
from vitalcast.ingest._withdraw import StoredStay, keep_if_newer, stored_stays, write_changes
from vitalcast.ingest.report import IngestReport, Reopening

_UNKNOWN = (
    "the discharge of a visit that is not stored was cancelled (ADT^A13); nothing was reopened"
)
_WITHDRAWN = (
    "the discharge of a withdrawn stay was cancelled (ADT^A13); a withdrawal is final, so"
    " the stay stays withdrawn and is not scored"
)
_NO_VERSION = (
    "the discharge was cancelled (ADT^A13) without an MSH-7 message time to order it after"
    " the discharge; the stay was left as it is"
)


def store_discharge_cancellations(
    session: Session,
    records: Sequence[DischargeCancellation],
    resolver: Resolver,
    report: IngestReport,
    reject: Reject,
) -> None:
    """Reopen the stored stays these records are newer versions of; quarantine those
    of no stored stay, of a withdrawn stay or without a version.

    Runs after the batch's stays and withdrawals are stored, so that a cancellation is
    compared with the newest version of its stay and sees a withdrawal of the same batch.
    A newer A13 for a stay that is not discharged reopens nothing, but is kept as the
    stay's version: a late A03 older than it then does not discharge the stay.
    """
    if not records:
        return
    counts = report.count("encounter")
    resolver.load_encounters(r.ref for r in records)
    stored = stored_stays(session, (k[0] for r in records if (k := resolver.encounters.get(r.ref))))
    chosen: dict[int, DischargeCancellation] = {}
    for rec in records:
        where = rec.source_ref or rec.ref
        known = resolver.encounters.get(rec.ref)
        if known is None:
            reject("encounter", where, "unknown_encounter", _UNKNOWN, rec)
            continue
        if rec.version is None:
            reject("encounter", where, "no_message_time", _NO_VERSION, rec, patient_id=known[1])
            continue
        stay = stored[known[0]]
        if stay.withdrawn_at is not None and is_newer(rec.version, stay.version):
            # A withdrawal is final. (One not newer is an old message: a duplicate below.)
            reject("encounter", where, "withdrawn_stay", _WITHDRAWN, rec, patient_id=known[1])
            continue
        keep_if_newer(chosen, known[0], rec, stay.version, counts)
    write_changes(
        session,
        chosen,
        counts,
        lambda eid, rec: {
            "id": eid,
            "discharged_at": None,
            "source_version": rec.version,
            "discharge_cancelled_version": rec.version,
        },
    )
    for eid, rec in chosen.items():
        stay = stored[eid]
        if stay.discharged_at is None:
            report.updated["encounter"] += 1  # in progress already: only its version
            continue
        _report_reopened(report, eid, stay, rec.source_ref or rec.ref)


def reopen_stated_stays(
    session: Session,
    records: Sequence[EncounterRecord],
    resolver: Resolver,
    report: IngestReport,
) -> None:
    """Reopen the discharged stays whose stored version (just written by
    :func:`~vitalcast.ingest._resolve.store_encounters`) states they are going on.

    Only the version the store kept counts: an in-progress version superseded in the same
    batch by a newer finished one reopens nothing. A withdrawn stay stays withdrawn. The
    version is kept as the stay's ``discharge_cancelled_version``, so that an older
    finished version arriving later does not discharge it again.
    """
    stated = [
        (known[0], rec)
        for rec in records
        if rec.in_progress_stated and (known := resolver.encounters.get(rec.ref))
    ]
    if not stated:
        return
    stored = stored_stays(session, (eid for eid, _rec in stated))
    chosen = {
        eid: rec
        for eid, rec in stated
        if (stay := stored.get(eid)) is not None
        and rec.version is not None
        and stay.version == rec.version
        and stay.discharged_at is not None
        and stay.withdrawn_at is None
    }
    if not chosen:
        return
    session.execute(
        update(Encounter),
        [
            {"id": eid, "discharged_at": None, "discharge_cancelled_version": rec.version}
            for eid, rec in chosen.items()
        ],
    )
    for eid, rec in chosen.items():
        _report_reopened(report, eid, stored[eid], rec.source_ref or rec.ref)


def _report_reopened(report: IngestReport, eid: int, stay: StoredStay, location: str) -> None:
    """A stay put back in progress: reported and audited (``Reopening``), and rescored."""
    report.reopened.append(Reopening(location, stay.patient_public_id, stay.encounter_public_id))
    report.touched_encounters.add(eid)  # in progress again: to be scored, now
