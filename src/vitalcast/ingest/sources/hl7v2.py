"""HL7 v2 messages: ADT^A01/A03/A08 (admit, discharge, update) and ORU^R01 (results).

Parsed with the ``hl7`` package. Each message is one unit of work. Field positions follow
HL7 v2.5 (PID-3 identifiers, PID-5 name, PID-7 birth date, PID-8 sex; PV1-2 patient
class, PV1-3 assigned location, PV1-19 visit number, PV1-44/45 admit/discharge times;
OBR-7 and OBX-14 observation times; OBX-2 value type, OBX-3 identifier, OBX-5 value,
OBX-6 units, OBX-11 result status, OBX-18 equipment instance).

Identifiers in messages (MRN, visit number) are direct identifiers under HIPAA, so the
source references the store keeps are keyed hashes of them (``pseudonym``), never the
values; the MRN itself goes only into the encrypted identifier payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import partial
from pathlib import Path
from typing import Any

import hl7

from vitalcast.clinical.records import (
    EncounterRecord,
    ObservationRecord,
    PatientRecord,
    RecordBatch,
    Rejected,
    Sex,
)
from vitalcast.clinical.times import TimeOutOfRange, check_year, to_utc
from vitalcast.errors import IngestError
from vitalcast.ingest.units import ParsedUnit
from vitalcast.ingest.validate import finite_number

SOURCE = "hl7v2"
SUPPORTED = frozenset({"ADT^A01", "ADT^A03", "ADT^A08", "ORU^R01"})
Pseudonym = Callable[[str], str]

_SEX: dict[str, Sex] = {"F": "female", "M": "male", "O": "other", "A": "other", "U": "unknown"}
# PV1-2 patient class (HL7 table 0004) -> the store's encounter kinds.
_KIND = {"I": "inpatient", "E": "emergency", "O": "outpatient", "P": "outpatient"}
# OBX-11 result status (HL7 table 0085): results that must not reach a model.
_WITHDRAWN = {"X": "result cannot be obtained", "D": "result deleted", "W": "result was wrong"}
_LOINC_SYSTEMS = frozenset({"LN", "LOINC", "http://loinc.org"})
_MESSAGE_TYPE = re.compile(r"^[A-Z0-9]{1,3}\^[A-Z0-9]{0,3}$")  # quoted only if it looks so
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
MAX_CODE_CHARS = 32
# MSH-2: component, repetition, escape, subcomponent (v2.5) and truncation (v2.7).
_MAX_ENCODING_CHARS = 5
# Segments that carry or place a patient's data: before the first PID they belong to
# nobody known (ORU^R01 2.5 section 7.3.1: a PATIENT_RESULT group starts with its PID).
_PATIENT_DATA = frozenset({"PV1", "PV2", "ORC", "OBR", "OBX"})


class Hl7FormatError(IngestError):
    """The message cannot be read at all; an MLLP listener answers it with AR."""


@dataclass(frozen=True)
class Hl7Message:
    """One parsed message, with what an ACK needs."""

    unit: ParsedUnit
    control_id: str
    message_type: str
    version: str
    sending: tuple[str, str]  # MSH-3 application, MSH-4 facility
    receiving: tuple[str, str]  # MSH-5, MSH-6


class _Seg:
    """String access to fields and components, unescaped (the ``hl7`` containers nest
    differently with and without repetitions; plain strings are predictable)."""

    def __init__(self, msg: Any, seg: Any) -> None:
        self.msg, self.seg = msg, seg
        self.rep_sep, self.comp_sep = msg.separators[2], msg.separators[3]

    def field(self, n: int) -> str:
        return str(self.seg[n]) if n < len(self.seg) else ""

    def reps(self, n: int) -> list[list[str]]:
        text = self.field(n)
        return [
            [self.msg.unescape(c) for c in rep.split(self.comp_sep)]
            for rep in text.split(self.rep_sep)
            if rep
        ]

    def comp(self, n: int, c: int = 1) -> str:
        reps = self.reps(n)
        return reps[0][c - 1].strip() if reps and len(reps[0]) >= c else ""


def parse_dtm(text: str, *, tz: tzinfo, what: str, need_time: bool = True) -> datetime | None:
    """An HL7 DTM (``YYYYMMDDHHMM[SS[.S]][+ZZZZ]``) as aware UTC; ``None`` when empty.

    Times without an offset are the sender's local time, taken to be ``tz``. Errors name
    ``what`` and the problem, never the text: a time of care is PHI, and a field shifted
    by a stray delimiter may hold anything.

    Raises:
        ValueError: malformed, or day precision where a time of day is needed;
            :class:`~vitalcast.clinical.times.TimeOutOfRange` (a ValueError, code
            ``time_out_of_range``) for a year outside the clinical range, checked before
            the conversion to UTC that would overflow near year 1 or 9999.
    """
    text = text.strip()
    if not text:
        return None
    m = _DTM.match(text)
    if not m or not m.group(2) or not m.group(3):
        raise ValueError(f"{what} is not an HL7 date/time")
    if m.group(4) is None and need_time:
        raise ValueError(f"{what} has no time of day")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups()[:6])
    micro = int(float(m.group(7)) * 1e6) if m.group(7) else 0
    zone: tzinfo = tz
    if m.group(8):
        sign = 1 if m.group(8)[0] == "+" else -1
        hours, minutes = int(m.group(8)[1:3]), int(m.group(8)[3:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{what} has an impossible UTC offset")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        local = datetime(y, mo, d, h, mi, s, micro, tzinfo=zone)
    except ValueError:
        raise ValueError(f"{what} is not a calendar date/time") from None
    return to_utc(local, what)


def split_messages(text: str) -> list[str]:
    """Messages in a text: segments end with CR, LF or CRLF; each MSH starts a message."""
    text = text.replace("\x0b", "").replace("\x1c", "")
    messages: list[list[str]] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        if line.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(segs) for segs in messages]


def delimiter_problem(text: str) -> str | None:
    """What is wrong with MSH-1 (field separator) and MSH-2 (encoding characters), if
    anything: they must be distinct, non-alphanumeric characters, MSH-2 at most five.

    The ``hl7`` package builds its parse plan from them and fails an internal assertion
    (not a parse error) when two coincide, so they are checked first. The answer quotes
    at most the delimiter characters: with a wrong MSH-1 the "MSH-2" runs on into the
    segments after it (names, MRNs), which no message may repeat.
    """
    if not text.startswith("MSH") or len(text) < 5:
        return "it does not begin with an MSH segment"
    field = text[3]
    encoding = text[4:].split(field, 1)[0]
    if len(encoding) > _MAX_ENCODING_CHARS or field not in text[4:]:
        return (
            f"MSH-2 (encoding characters) is not ended by MSH-1 {field!r} within"
            f" {_MAX_ENCODING_CHARS} characters: is MSH-1 the field separator?"
        )
    delimiters = field + encoding
    if len(set(delimiters)) != len(delimiters) or any(
        c.isalnum() or c.isspace() for c in delimiters
    ):
        return (
            f"MSH-1/MSH-2 delimiters {delimiters!r} must be distinct, non-alphanumeric characters"
        )
    return None


def _count_msh(text: str) -> int:
    return sum(1 for segment in text.split("\r") if segment.startswith("MSH"))


def parse_message(text: str, *, origin: str, pseudonym: Pseudonym, tz: tzinfo = UTC) -> Hl7Message:
    """Parse one message into a unit of canonical records.

    An ORU^R01 may hold several PATIENT_RESULT groups: each PID with the PV1, ORC, OBR and
    OBX after it is mapped to that patient. An ADT is about one patient and one visit.
    A message whose data cannot be placed with certainty (a second PID or PV1 in an ADT,
    results before the first PID, a second MSH) is refused whole: a result stored under
    the wrong patient is worse than one not stored.

    Raises:
        Hl7FormatError: not an HL7 v2 message, an unsupported type, no usable PID-3, or
            data that cannot be attributed to one patient. Its text never quotes the
            message's content beyond delimiters, control id and message type.
    """
    text = text.strip().replace("\n", "\r")
    problem = delimiter_problem(text)
    if problem is not None:
        raise Hl7FormatError(f"{origin}: not an HL7 v2 message ({problem})")
    if (n_msh := _count_msh(text)) > 1:
        raise Hl7FormatError(
            f"{origin}: {n_msh} MSH segments, so {n_msh} messages in one (MLLP carries one"
            " message per frame); nothing was stored: send each message on its own"
        )
    try:
        msg = hl7.parse(text)
        msh = _Seg(msg, msg.segment("MSH"))
    except (hl7.ParseException, KeyError, IndexError, ValueError):
        # The exception's text quotes the input: it is not repeated.
        raise Hl7FormatError(f"{origin}: not an HL7 v2 message (unreadable MSH)") from None
    control_id = msh.comp(10) or "?"
    mtype = f"{msh.comp(9, 1)}^{msh.comp(9, 2)}"
    where = f"{origin}#{control_id}"
    if mtype not in SUPPORTED:
        shown = mtype if _MESSAGE_TYPE.match(mtype) else "in MSH-9"
        raise Hl7FormatError(
            f"{where}: message type {shown} is not supported"
            f" (supported: {', '.join(sorted(SUPPORTED))})"
        )
    segs = [_Seg(msg, s) for s in msg]
    groups = _patient_groups(segs, mtype, where)
    unit = ParsedUnit(where)
    # An ADT is the source of truth for demographics and the stay: its message time
    # (MSH-7) versions them, so an A08 sent later replaces what an A01 stored, and an
    # older message arriving late changes nothing. Results (ORU) only refer to them.
    version = _version(msh, tz) if mtype != "ORU^R01" else None
    refs = [
        _patient_ref(g[0], _group_where(where, k, len(groups)), pseudonym)
        for k, g in enumerate(groups, 1)
    ]
    evn = next((s for s in segs if _kind(s) == "EVN"), None)
    n_obx = 0
    for k, (group, patient_ref) in enumerate(zip(groups, refs, strict=True), start=1):
        nth = "" if len(groups) == 1 else f"[{k}]"
        _add_patient(group[0], patient_ref, f"{where}.PID{nth}", version, unit.batch)
        pv1 = next((s for s in group if _kind(s) == "PV1"), None)
        encounter_ref = None
        if pv1 is not None:
            encounter_ref = _encounter(
                pv1,
                evn,
                patient_ref,
                f"{where}.PV1{nth}",
                pseudonym,
                tz,
                unit.batch,
                is_adt=mtype != "ORU^R01",
                version=version,
            )
        if mtype == "ORU^R01":
            n_obx = _results(group, patient_ref, encounter_ref, where, n_obx, tz, unit.batch)
    return Hl7Message(
        unit=unit,
        control_id=control_id,
        message_type=mtype,
        version=msh.comp(12) or "2.5",
        sending=(msh.comp(3), msh.comp(4)),
        receiving=(msh.comp(5), msh.comp(6)),
    )


def _kind(seg: _Seg) -> str:
    return str(seg.seg[0])


def _group_where(where: str, k: int, n: int) -> str:
    """How an error names patient group ``k`` of ``n`` (no suffix when there is one)."""
    return where if n == 1 else f"{where} (patient group {k} of {n})"


def _patient_groups(segs: list[_Seg], mtype: str, where: str) -> list[list[_Seg]]:
    """The message's segments split at each PID (the PID first in each group).

    Raises:
        Hl7FormatError: no PID; patient data before the first PID; an ADT with more than
            one PID; a group with more than one PV1 (which visit would its results join?).
    """
    if not any(_kind(s) == "PID" for s in segs):
        raise Hl7FormatError(f"{where}: {mtype} without a PID segment")
    groups: list[list[_Seg]] = []
    for seg in segs:
        kind = _kind(seg)
        if kind == "PID":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
        elif kind in _PATIENT_DATA:
            raise Hl7FormatError(
                f"{where}: {kind} before the first PID: whose it is cannot be known;"
                " nothing was stored"
            )
    if mtype != "ORU^R01" and len(groups) > 1:
        raise Hl7FormatError(
            f"{where}: {mtype} has {len(groups)} PID segments (an ADT is about one patient);"
            " nothing was stored"
        )
    for k, group in enumerate(groups, start=1):
        n_pv1 = sum(1 for s in group if _kind(s) == "PV1")
        if n_pv1 > 1:
            whose = "" if len(groups) == 1 else f" in patient group {k}"
            raise Hl7FormatError(
                f"{where}: {mtype} has {n_pv1} PV1 segments{whose} (one visit per patient);"
                " nothing was stored"
            )
    return groups


def _add_patient(pid: _Seg, ref: str, loc: str, version: str | None, batch: RecordBatch) -> None:
    """The PID's person into the batch, or into quarantine when a field is unreadable.

    Storing them without that field would be a half-written record. The group's other
    items still refer to the patient (known from an earlier message, or quarantined as
    unknown_patient and replayable with it), as a bad OBX-14 quarantines only its result.
    """
    batch.received += 1
    try:
        patient = replace(_patient(pid, ref, loc), version=version)
    except _Problem as exc:
        batch.rejected.append(Rejected(loc, exc.code, str(exc), str(pid.seg), "patient"))
    else:
        batch.patients.append(patient)


def _mrn(pid: _Seg, where: str) -> tuple[str, str]:
    """(MRN, assigning authority) from PID-3, preferring the MR-typed identifier."""
    ids = pid.reps(3)
    chosen = next((r for r in ids if len(r) >= 5 and r[4] == "MR"), ids[0] if ids else None)
    if not chosen or not chosen[0].strip():
        raise Hl7FormatError(f"{where}: PID-3 (patient identifier) is empty")
    return chosen[0].strip(), chosen[3].strip() if len(chosen) >= 4 else ""


def _patient_ref(pid: _Seg, where: str, pseudonym: Pseudonym) -> str:
    mrn, authority = _mrn(pid, where)
    return f"mrn:{pseudonym(f'{authority}|{mrn}')[:40]}"


def _patient(pid: _Seg, ref: str, loc: str) -> PatientRecord:
    """The PID's person; :class:`_Problem` when a field is present but unreadable."""
    mrn, _authority = _mrn(pid, loc)
    name = pid.reps(5)
    full = " ".join(p for p in (*name[0][1:3], name[0][0]) if p).strip() if name else ""
    return PatientRecord(
        ref=ref,
        sex=_SEX.get(pid.comp(8).upper()[:1], "unknown"),
        mrn=mrn,
        name=full or None,
        birth_date=_birth_date(pid.comp(7)),
        source_ref=loc,
    )


def _birth_date(text: str) -> date | None:
    """PID-7 as a date; None when empty or partial (a year, a month: no day to compare
    measurements against, as for a partial FHIR birthDate).

    Raises:
        _Problem: ``bad_birth_date`` (not a date such as ``19501399``) or
            ``time_out_of_range``. The message does not repeat the value: a birth date
            is an identifier.
    """
    text = text.strip()
    if not text:
        return None
    m = _DTM.match(text)
    if m is None:
        raise _Problem("bad_birth_date", "PID-7 birth date is not an HL7 date (YYYYMMDD)")
    if not m.group(2) or not m.group(3):
        return None
    try:
        born = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        check_year(born, "PID-7 birth date")
    except TimeOutOfRange as exc:
        raise _Problem(exc.code, str(exc)) from None
    except ValueError:
        raise _Problem("bad_birth_date", "PID-7 birth date is not a calendar date") from None
    return born


def _encounter(
    pv1: _Seg,
    evn: _Seg | None,
    patient_ref: str,
    loc: str,
    pseudonym: Pseudonym,
    tz: tzinfo,
    batch: RecordBatch,
    *,
    is_adt: bool,
    version: str | None = None,
) -> str | None:
    """The visit's encounter reference; ADT messages also create or complete it.

    In an ORU, PV1 only points at the visit (its admit time is usually absent): results
    join the encounter an ADT^A01 created, and are quarantined if there is none.
    """
    visit = pv1.comp(19)
    if not is_adt and not pv1.comp(44):
        return f"visit:{pseudonym(f'visit|{visit}')[:40]}" if visit else None
    try:
        admitted = parse_dtm(pv1.comp(44), tz=tz, what="PV1-44 admit time")
        admission_known = admitted is not None
        if admitted is None and evn is not None:
            admitted = parse_dtm(evn.comp(6) or evn.comp(2), tz=tz, what="EVN event time")
        discharged = parse_dtm(pv1.comp(45), tz=tz, what="PV1-45 discharge time")
    except ValueError as exc:
        admitted, discharged, problem, admission_known = None, None, str(exc), False
        code = getattr(exc, "code", "no_time")
    else:
        problem = "no admit time (PV1-44 or EVN)" if admitted is None else ""
        code = "no_time"
    ref = (
        f"visit:{pseudonym(f'visit|{visit}')[:40]}"
        if visit
        else f"{patient_ref}@{admitted.isoformat() if admitted else '?'}"
    )
    batch.received += 1
    if admitted is None:
        batch.rejected.append(Rejected(loc, code, problem, None, "encounter"))
        return ref
    batch.encounters.append(
        EncounterRecord(
            ref=ref,
            patient_ref=patient_ref,
            admitted_at=admitted,
            discharged_at=discharged,
            kind=_KIND.get(pv1.comp(2).upper(), "inpatient"),  # type: ignore[arg-type]
            unit=pv1.comp(3, 1) or None,
            admission_source=pv1.comp(14) or None,
            source_ref=loc,
            version=version,
            admission_known=admission_known,
        )
    )
    return ref


def _results(
    group: list[_Seg],
    patient_ref: str,
    encounter_ref: str | None,
    where: str,
    n_obx: int,
    tz: tzinfo,
    batch: RecordBatch,
) -> int:
    """One patient group's OBX into the batch; returns the message's OBX count so far
    (locations number the OBX of the whole message). An OBX takes the time of the OBR
    above it in its own group only."""
    obr_time = ""
    for seg in group:
        kind = str(seg.seg[0])
        if kind == "OBR":
            obr_time = seg.comp(7)
        if kind != "OBX":
            continue
        n_obx += 1
        loc = f"{where}.OBX[{n_obx}]"
        raw = str(seg.seg)
        batch.received += 1
        try:
            rec = _observation(seg, patient_ref, encounter_ref, obr_time, loc, tz)
        except _Problem as exc:
            batch.rejected.append(Rejected(loc, exc.code, str(exc), raw))
            continue
        batch.observations.append(rec)
    return n_obx


def _version(msh: _Seg, tz: tzinfo) -> str | None:
    """MSH-7 (message time) as a sortable UTC text, or None when absent or unreadable."""
    try:
        at = parse_dtm(msh.comp(7), tz=tz, what="MSH-7 message time")
    except ValueError:
        return None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") if at else None


class _Problem(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    seg: _Seg,
    patient_ref: str,
    encounter_ref: str | None,
    obr_time: str,
    loc: str,
    tz: tzinfo,
) -> ObservationRecord:
    code = _code(seg.reps(3))
    if not code:
        raise _Problem("no_code", "OBX-3 has no observation identifier")
    if len(code) > MAX_CODE_CHARS:
        raise _Problem(
            "unknown_code",
            f"OBX-3 code longer than {MAX_CODE_CHARS} characters is not in the vocabulary",
        )
    status = seg.comp(11).upper()
    if status in _WITHDRAWN:
        raise _Problem("withdrawn_result", f"OBX-11 status {status}: {_WITHDRAWN[status]}")
    try:
        when = parse_dtm(seg.comp(14) or obr_time, tz=tz, what="observation time")
    except ValueError as exc:
        raise _Problem(getattr(exc, "code", "bad_time"), str(exc)) from None
    if when is None:
        raise _Problem("no_time", "no observation time (OBX-14 or OBR-7)")
    vtype = seg.comp(2).upper()
    values = seg.reps(5)
    first = values[0] if values else []
    value: float | None = None
    text: str | None = None
    if vtype in ("NM", "SN"):
        # SN is comparator^number; only an exact ("=" or empty comparator) value is a number.
        number = first[1] if vtype == "SN" and len(first) > 1 else (first[0] if first else "")
        comparator = first[0] if vtype == "SN" and len(first) > 1 else ""
        try:
            if comparator not in ("", "="):
                raise ValueError
            # An empty OBX-5 is no value (below), not a value that is not a number.
            value = finite_number(number) if number.strip() else None
        except ValueError:
            raise _Problem(
                "non_numeric_value", f"{code}: {vtype} value is not an exact number"
            ) from None
    elif vtype in ("CE", "CWE", "CNE"):
        text = first[1] if len(first) > 1 and first[1] else first[0] if first else ""
    else:
        text = first[0] if first else ""
    # A text for a numeric variable is the store's rule (non_numeric_value, every source
    # alike); a text longer than the store keeps is its too_long, never cut here.
    if value is None and not text:
        raise _Problem("no_value", f"{code}: OBX-5 is empty")
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
        # No identity: the content key (patient, visit, code, time, value) makes a resent
        # message a no-op whatever connection or file it arrives through.
        identity=None,
    )


def decode_text(data: bytes, name: str) -> str:
    """HL7 v2 files and frames as text: UTF-8, else an error (no guessed code pages).

    Raises:
        Hl7FormatError: not UTF-8.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Hl7FormatError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def _fail(error: Hl7FormatError) -> ParsedUnit:
    raise error


def iter_file_messages(
    paths: list[Path], *, pseudonym: Pseudonym, tz: tzinfo = UTC
) -> Iterator[tuple[str, Callable[[], ParsedUnit]]]:
    """Yield (name, loader) per message in the files (one or many messages each).

    A file that cannot be read (not UTF-8, unreadable, empty) is one unit whose loader
    raises: the files after it are still read, and the run reports it.

    Raises:
        Hl7FormatError: a path does not exist (before anything is yielded).
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise Hl7FormatError(f"{path}: no such file or folder")
    for file in files:
        try:
            text = decode_text(file.read_bytes(), file.name)
        except (Hl7FormatError, OSError) as exc:
            error = (
                exc
                if isinstance(exc, Hl7FormatError)
                else Hl7FormatError(f"{file.name}: cannot read the file ({exc.strerror})")
            )
            yield file.name, partial(_fail, error)
            continue
        messages = split_messages(text)
        if not messages:
            # As an empty FHIR file is (malformed JSON): nothing read is an error, exit 2.
            empty = Hl7FormatError(f"{file.name}: no HL7 v2 message in the file (it is empty)")
            yield file.name, partial(_fail, empty)
            continue
        for n, message in enumerate(messages, start=1):
            origin = f"{file.name}:msg[{n}]"

            def load(message: str = message, origin: str = origin) -> ParsedUnit:
                return parse_message(message, origin=origin, pseudonym=pseudonym, tz=tz).unit

            yield origin, load
