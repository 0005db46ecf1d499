"""HL7 v2 results: each OBX of an ORU^R01 to an observation, or to quarantine.

Split from :mod:`.hl7v2` because the result rules (OBX-3 code, OBX-11 withdrawn status,
OBX-2 value types, OBX-14/OBR-7 times) are the adapter's largest part and change apart
from message framing and the patient and visit mapping.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, tzinfo

from vitalcast.clinical.records import (
    ObservationRecord,
    ObservationRetraction,
    RecordBatch,
    Rejected,
)
from vitalcast.ingest.sources._hl7_fields import Problem, Seg, parse_dtm
from vitalcast.ingest.validate import finite_number

# OBX-11 result status (HL7 table 0085): results that must not reach a model.
_WITHDRAWN = {"X": "result cannot be obtained", "D": "result deleted", "W": "result was wrong"}
_LOINC_SYSTEMS = frozenset({"LN", "LOINC", "http://loinc.org"})
MAX_CODE_CHARS = 32


def add_results(
    group: list[Seg],
    patient_ref: str,
    encounter_ref: str | None,
    where: str,
    n_obx: int,
    tz: tzinfo,
    batch: RecordBatch,
    version: str | None = None,
) -> int:
    """One patient group's OBX into the batch; returns the message's OBX count so far
    (locations number the OBX of the whole message). An OBX takes the time of the OBR
    above it in its own group only.

    ``version`` is the message's MSH-7 (sortable UTC text): with the order number of the
    OBR above it, it lets a corrected result (OBX-11 ``C``, resent later under the same
    order) replace the value stored, instead of being stored beside it.
    """
    obr_time = ""
    order = ""
    for seg in group:
        kind = str(seg.seg[0])
        if kind == "OBR":
            obr_time = seg.comp(7)
            order = seg.comp(3) or seg.comp(2)  # filler order number, else the placer's
        if kind != "OBX":
            continue
        n_obx += 1
        loc = f"{where}.OBX[{n_obx}]"
        raw = str(seg.seg)
        batch.received += 1
        if order and version and (taken_back := _retraction(seg, obr_time, tz)) is not None:
            code, when, status = taken_back
            batch.retractions.append(
                ObservationRetraction(
                    patient_ref=patient_ref,
                    identity=_identity(seg, patient_ref, order, code, when),
                    version=version,
                    code=code,
                    reason_code="withdrawn_result",
                    reason=f"OBX-11 status {status}: {_WITHDRAWN[status]}",
                    source_ref=loc,
                    raw=raw,
                )
            )
            continue
        try:
            rec = _observation(seg, patient_ref, encounter_ref, obr_time, loc, tz)
        except Problem as exc:
            batch.rejected.append(Rejected(loc, exc.code, str(exc), raw))
            continue
        if order and version:
            identity = _identity(seg, patient_ref, order, rec.code, rec.effective_at)
            rec = replace(rec, identity=identity, version=version)
        batch.observations.append(rec)
    return n_obx


def _identity(seg: Seg, patient_ref: str, order: str, code: str, when: datetime) -> str:
    """The result's place in its order: the same OBX resent is the same result, whatever
    its value; a newer message's version of it replaces the stored one (or, withdrawn,
    removes it). The time is part of it, so that readings charted under one standing
    order (a monitor's) never replace each other. Hashed into the dedup key only."""
    slot = (patient_ref, order, seg.comp(1), code, seg.comp(4))
    return "|".join(("hl7-obx", *slot, when.isoformat()))


def _retraction(seg: Seg, obr_time: str, tz: tzinfo) -> tuple[str, datetime, str] | None:
    """(code, time, OBX-11) of an OBX withdrawing its result (OBX-11 W, D or X), when it
    names the result as the result's own OBX did; None otherwise (a result, or a
    withdrawal that cannot name one, which :func:`_observation` refuses)."""
    status = seg.comp(11).upper()
    if status not in _WITHDRAWN:
        return None
    code = _code(seg.reps(3))
    if not code or len(code) > MAX_CODE_CHARS:
        return None
    try:
        when = parse_dtm(seg.comp(14) or obr_time, tz=tz, what="observation time")
    except ValueError:
        return None
    return None if when is None else (code, when, status)


def _code(ident: list[list[str]]) -> str:
    """OBX-3: the LOINC code, from the identifier or its alternate (components 4-6)."""
    if not ident:
        return ""
    comps = ident[0] + [""] * 6
    if comps[2].strip() in _LOINC_SYSTEMS or not comps[5].strip():
        return comps[0].strip()
    if comps[5].strip() in _LOINC_SYSTEMS:
        return comps[3].strip()
    return comps[0].strip()


def _observation(
    seg: Seg,
    patient_ref: str,
    encounter_ref: str | None,
    obr_time: str,
    loc: str,
    tz: tzinfo,
) -> ObservationRecord:
    code = _code(seg.reps(3))
    if not code:
        raise Problem("no_code", "OBX-3 has no observation identifier")
    if len(code) > MAX_CODE_CHARS:
        raise Problem(
            "unknown_code",
            f"OBX-3 code longer than {MAX_CODE_CHARS} characters is not in the vocabulary",
        )
    status = seg.comp(11).upper()
    if status in _WITHDRAWN:
        raise Problem("withdrawn_result", f"OBX-11 status {status}: {_WITHDRAWN[status]}")
    try:
        when = parse_dtm(seg.comp(14) or obr_time, tz=tz, what="observation time")
    except ValueError as exc:
        raise Problem(getattr(exc, "code", "bad_time"), str(exc)) from None
    if when is None:
        raise Problem("no_time", "no observation time (OBX-14 or OBR-7)")
    vtype = seg.comp(2).upper()
    values = seg.reps(5)
    first = values[0] if values else []
    value: float | None = None
    text: str | None = None
    if vtype in ("NM", "SN") and len(values) > 1:
        # Repetitions of a number are several values in one result: keeping the first
        # would drop the others without a word, and which one is the result is unknown.
        raise Problem(
            "non_numeric_value",
            f"{code}: OBX-5 repeats ({len(values)} values in one {vtype} result);"
            " send one value per OBX",
        )
    if vtype in ("NM", "SN"):
        # SN is comparator^num1^separator/suffix^num2: only an exact value ("=" or empty
        # comparator, no separator or second number) is a number. A ratio (1^:^128) or a
        # range (5^-^9) is not its first number: storing 1 mmHg or 5 mmol/L would be wrong.
        number = first[1] if vtype == "SN" and len(first) > 1 else (first[0] if first else "")
        comparator = first[0] if vtype == "SN" and len(first) > 1 else ""
        rest = first[2:] if vtype == "SN" else []
        try:
            if comparator not in ("", "=") or any(part.strip() for part in rest):
                raise ValueError
            # An empty OBX-5 is no value (below), not a value that is not a number.
            value = finite_number(number) if number.strip() else None
        except ValueError:
            raise Problem(
                "non_numeric_value", f"{code}: {vtype} value is not an exact number"
            ) from None
    elif vtype in ("CE", "CWE", "CNE"):
        text = first[1] if len(first) > 1 and first[1] else first[0] if first else ""
    else:
        text = first[0] if first else ""
    # A text for a numeric variable is the store's rule (non_numeric_value, every source
    # alike); a text longer than the store keeps is its too_long, never cut here.
    if value is None and not text:
        raise Problem("no_value", f"{code}: OBX-5 is empty")
    return ObservationRecord(
        patient_ref=patient_ref,
        encounter_ref=encounter_ref,
        code=code,
        effective_at=when,
        value=value,
        unit=seg.comp(6, 1) or None,
        value_text=text,
        device_id=seg.comp(18, 1) or None,
        source_ref=loc,
        # No identity here: without an order and a message time (add_results) the content
        # key (patient, visit, code, time, value) makes a resent message a no-op whatever
        # connection or file it arrives through.
        identity=None,
    )
