"""HL7 v2 cancellations: ADT^A11 (cancel admit/visit) and ADT^A13 (cancel discharge).

Unsupported before, each was refused (AR) and the EHR's correction never reached the
ward: a cancelled admission stayed in progress and scored, a patient whose discharge was
cancelled stayed discharged and unscored. Each now maps to one record about the stored
stay of its visit, found as the admission that stored it named it (:func:`visit_ref`):
an A11 to an :class:`EncounterWithdrawal` (``cancelled``), an A13 to a
:class:`DischargeCancellation`. The store orders them by the message time (MSH-7), as it
does every ADT, and quarantines those of a visit that is not stored.

A cancellation states an event that did not happen; it creates nothing. So its PID only
says whose visit it is (no patient is stored or updated from it), and its PV1 only which
visit: the stay's other fields stay as the admission and its updates stored them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo

from vitalcast.clinical.records import (
    DischargeCancellation,
    EncounterWithdrawal,
    RecordBatch,
    Rejected,
)
from vitalcast.ingest.sources._hl7_fields import Seg, parse_dtm

A11, A13 = "ADT^A11", "ADT^A13"
CANCELS = frozenset({A11, A13})
_A11_REASON = "the admission was cancelled in the EHR (ADT^A11)"


def visit_ref(
    visit: str, patient_ref: str, admitted: datetime | None, pseudonym: Callable[[str], str]
) -> str:
    """The reference of a stay: a keyed hash of its visit number (PV1-19), or else the
    patient's reference and the admission time. Every ADT and ORU of the visit names it
    so, and so finds the stay the admission stored."""
    if visit:
        return f"visit:{pseudonym(f'visit|{visit}')[:40]}"
    return f"{patient_ref}@{admitted.isoformat() if admitted else '?'}"


def add_cancellation(
    mtype: str,
    pv1: Seg | None,
    patient_ref: str,
    loc: str,
    pseudonym: Callable[[str], str],
    tz: tzinfo,
    version: str | None,
    batch: RecordBatch,
) -> None:
    """The A11's withdrawal or the A13's reopening of its visit into the batch, or into
    quarantine (``no_visit``, or the admit time's own code) when the visit cannot be told.

    Without PV1-19, the visit is the admission at PV1-44, never at the EVN time: in a
    cancellation that is the time of the cancellation, not of the admission.
    """
    batch.received += 1
    what = "admission" if mtype == A11 else "discharge"
    if pv1 is None:
        reason = f"{mtype} without PV1: which stay's {what} was cancelled cannot be known"
        batch.rejected.append(Rejected(loc, "no_visit", reason, None, "encounter"))
        return
    visit = pv1.comp(19)
    admitted = None
    if not visit:
        try:
            admitted = parse_dtm(pv1.comp(44), tz=tz, what="PV1-44 admit time")
        except ValueError as exc:
            code = getattr(exc, "code", "no_time")
            batch.rejected.append(Rejected(loc, code, str(exc), str(pv1.seg), "encounter"))
            return
        if admitted is None:
            reason = (
                f"{mtype} has neither PV1-19 visit number nor PV1-44 admit time: which"
                f" stay's {what} was cancelled cannot be known"
            )
            batch.rejected.append(Rejected(loc, "no_visit", reason, str(pv1.seg), "encounter"))
            return
    ref = visit_ref(visit, patient_ref, admitted, pseudonym)
    if mtype == A11:
        batch.withdrawals.append(
            EncounterWithdrawal(ref, "cancelled", _A11_REASON, source_ref=loc, version=version)
        )
    else:
        batch.discharge_cancellations.append(
            DischargeCancellation(ref, source_ref=loc, version=version)
        )
