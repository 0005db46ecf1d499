"""HL7 v2 messages: ADT^A01/A03/A08 (admit, discharge, update), ADT^A11/A13 (cancel
admit, cancel discharge) and ORU^R01 (results).

Parsed with the ``hl7`` package. Each message is one unit of work. Field positions follow
HL7 v2.5 (PID-3 identifiers, PID-5 name, PID-7 birth date, PID-8 sex; PV1-2 patient
class, PV1-3 assigned location, PV1-19 visit number, PV1-44/45 admit/discharge times;
OBR-7 and OBX-14 observation times; OBX-2 value type, OBX-3 identifier, OBX-5 value,
OBX-6 units, OBX-11 result status, OBX-18 equipment instance).

Identifiers in messages (MRN, visit number) are direct identifiers under HIPAA, so the
source references the store keeps are keyed hashes of them (``pseudonym``), never the
values; the MRN itself goes only into the encrypted identifier payload.

This module parses a message and maps its patients and visits; the steps around it live
in private modules: framing and decoding in :mod:`._hl7_framing`, field access and times
in :mod:`._hl7_fields`, the OBX results in :mod:`._hl7_results`, the cancellations
(A11 withdraws the visit's stay, A13 reopens it) in :mod:`._hl7_cancels`. Callers import all of
the adapter's public names from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, tzinfo
from functools import partial
from pathlib import Path

import hl7

from vitalcast.clinical.records import (
    DeletableField,
    EncounterRecord,
    PatientRecord,
    RecordBatch,
    Rejected,
    Sex,
)
from vitalcast.clinical.times import TimeOutOfRange, check_year
from vitalcast.ingest.sources._hl7_cancels import CANCELS, add_cancellation, visit_ref
from vitalcast.ingest.sources._hl7_fields import DTM, Problem, Seg
from vitalcast.ingest.sources._hl7_fields import parse_dtm as parse_dtm
from vitalcast.ingest.sources._hl7_framing import Hl7FormatError as Hl7FormatError
from vitalcast.ingest.sources._hl7_framing import count_msh
from vitalcast.ingest.sources._hl7_framing import decode_text as decode_text
from vitalcast.ingest.sources._hl7_framing import delimiter_problem as delimiter_problem
from vitalcast.ingest.sources._hl7_framing import split_messages as split_messages
from vitalcast.ingest.sources._hl7_results import add_results
from vitalcast.ingest.units import ParsedUnit

SOURCE = "hl7v2"
SUPPORTED = frozenset({"ADT^A01", "ADT^A03", "ADT^A08", "ORU^R01"} | CANCELS)
Pseudonym = Callable[[str], str]

_SEX: dict[str, Sex] = {"F": "female", "M": "male", "O": "other", "A": "other", "U": "unknown"}
# The HL7 v2 null (v2.5 section 2.5.3): a field of two double quotes deletes the value the
# receiver holds, where an empty field is "not sent" and keeps it.
HL7_NULL = '""'
# PV1-2 patient class (HL7 table 0004) -> the store's encounter kinds.
_KIND = {"I": "inpatient", "E": "emergency", "O": "outpatient", "P": "outpatient"}
_MESSAGE_TYPE = re.compile(r"^[A-Z0-9]{1,3}\^[A-Z0-9]{0,3}$")  # quoted only if it looks so
# Segments that carry or place a patient's data: before the first PID they belong to
# nobody known (ORU^R01 2.5 section 7.3.1: a PATIENT_RESULT group starts with its PID).
_PATIENT_DATA = frozenset({"PV1", "PV2", "ORC", "OBR", "OBX"})


@dataclass(frozen=True)
class Hl7Message:
    """One parsed message, with what an ACK needs."""

    unit: ParsedUnit
    control_id: str
    message_type: str
    version: str
    sending: tuple[str, str]  # MSH-3 application, MSH-4 facility
    receiving: tuple[str, str]  # MSH-5, MSH-6


def parse_message(text: str, *, origin: str, pseudonym: Pseudonym, tz: tzinfo = UTC) -> Hl7Message:
    """Parse one message into a unit of canonical records.

    An ORU^R01 may hold several PATIENT_RESULT groups: each PID with the PV1, ORC, OBR and
    OBX after it is mapped to that patient. An ADT is about one patient and one visit;
    an A11 or A13 only names them (it cancels the visit's admission or discharge).
    A message whose data cannot be placed with certainty (a second PID or PV1 in an ADT,
    results before the first PID, a second MSH) is refused whole: a result stored under
    the wrong patient is worse than one not stored.

    Raises:
        Hl7FormatError: not an HL7 v2 message, an unsupported type, no usable PID-3, or
            data that cannot be attributed to one patient. Its text never quotes the
            message's content beyond delimiters, control id and message type.
    """
    # CR ends a segment; CR LF (or LF alone) from some senders counts the same, as the
    # file reader splits them: a CR LF made into two CRs was an empty segment and the whole
    # message was refused as "unreadable MSH" over MLLP.
    text = text.strip().replace("\r\n", "\r").replace("\n", "\r")
    problem = delimiter_problem(text)
    if problem is not None:
        raise Hl7FormatError(f"{origin}: not an HL7 v2 message ({problem})")
    if (n_msh := count_msh(text)) > 1:
        raise Hl7FormatError(
            f"{origin}: {n_msh} MSH segments, so {n_msh} messages in one (MLLP carries one"
            " message per frame); nothing was stored: send each message on its own"
        )
    try:
        msg = hl7.parse(text)
        msh = Seg(msg, msg.segment("MSH"))
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
    segs = [Seg(msg, s) for s in msg]
    groups = _patient_groups(segs, mtype, where)
    unit = ParsedUnit(where)
    # An ADT is the source of truth for demographics and the stay: its message time
    # (MSH-7) versions them, so an A08 sent later replaces what an A01 stored, and an
    # older message arriving late changes nothing. Results (ORU) only refer to them.
    stamped = _version(msh, tz)
    version = stamped if mtype != "ORU^R01" else None
    # Results are versioned by it too (a corrected result replaces the one it corrects).
    result_version = stamped if mtype == "ORU^R01" else None
    refs = [
        _patient_ref(g[0], _group_where(where, k, len(groups)), pseudonym)
        for k, g in enumerate(groups, 1)
    ]
    evn = next((s for s in segs if _kind(s) == "EVN"), None)
    n_obx = 0
    for k, (group, patient_ref) in enumerate(zip(groups, refs, strict=True), start=1):
        nth = "" if len(groups) == 1 else f"[{k}]"
        pv1 = next((s for s in group if _kind(s) == "PV1"), None)
        if mtype in CANCELS:
            loc = f"{where}.PV1" if pv1 is not None else where
            add_cancellation(mtype, pv1, patient_ref, loc, pseudonym, tz, version, unit.batch)
            continue
        _add_patient(group[0], patient_ref, f"{where}.PID{nth}", version, unit.batch)
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
                discharging=mtype == "ADT^A03",
                version=version,
            )
        if mtype == "ORU^R01":
            n_obx = add_results(
                group, patient_ref, encounter_ref, where, n_obx, tz, unit.batch, result_version
            )
    return Hl7Message(
        unit=unit,
        control_id=control_id,
        message_type=mtype,
        version=msh.comp(12) or "2.5",
        sending=(msh.comp(3), msh.comp(4)),
        receiving=(msh.comp(5), msh.comp(6)),
    )


def _kind(seg: Seg) -> str:
    return str(seg.seg[0])


def _group_where(where: str, k: int, n: int) -> str:
    """How an error names patient group ``k`` of ``n`` (no suffix when there is one)."""
    return where if n == 1 else f"{where} (patient group {k} of {n})"


def _patient_groups(segs: list[Seg], mtype: str, where: str) -> list[list[Seg]]:
    """The message's segments split at each PID (the PID first in each group).

    Raises:
        Hl7FormatError: no PID; patient data before the first PID; an ADT with more than
            one PID; a group with more than one PV1 (which visit would its results join?).
    """
    if not any(_kind(s) == "PID" for s in segs):
        raise Hl7FormatError(f"{where}: {mtype} without a PID segment")
    groups: list[list[Seg]] = []
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


def _add_patient(pid: Seg, ref: str, loc: str, version: str | None, batch: RecordBatch) -> None:
    """The PID's person into the batch, or into quarantine when a field is unreadable.

    Storing them without that field would be a half-written record. The group's other
    items still refer to the patient (known from an earlier message, or quarantined as
    unknown_patient and replayable with it), as a bad OBX-14 quarantines only its result.
    """
    batch.received += 1
    try:
        patient = replace(_patient(pid, ref, loc), version=version)
    except Problem as exc:
        batch.rejected.append(Rejected(loc, exc.code, str(exc), str(pid.seg), "patient"))
    else:
        batch.patients.append(patient)


def _mrn(pid: Seg, where: str) -> tuple[str, str]:
    """(MRN, assigning authority) from PID-3, preferring the MR-typed identifier."""
    ids = pid.reps(3)
    chosen = next((r for r in ids if len(r) >= 5 and r[4] == "MR"), ids[0] if ids else None)
    if not chosen or not chosen[0].strip():
        raise Hl7FormatError(f"{where}: PID-3 (patient identifier) is empty")
    return chosen[0].strip(), chosen[3].strip() if len(chosen) >= 4 else ""


def _patient_ref(pid: Seg, where: str, pseudonym: Pseudonym) -> str:
    mrn, authority = _mrn(pid, where)
    return f"mrn:{pseudonym(f'{authority}|{mrn}')[:40]}"


def _patient(pid: Seg, ref: str, loc: str) -> PatientRecord:
    """The PID's person; :class:`Problem` when a field is present but unreadable.

    An empty field is not sent (HL7 v2.5 section 2.5.3): an A03 or A08 with a PID of only
    its MRN must not turn the stored sex to unknown, so it is ``absent`` and the store
    keeps what it holds. The HL7 null ``""`` deletes: the sex becomes unknown and the
    name or birth date is stored as none (with the ages derived from it; see
    ``_resolve._follow_birth_dates``). Before, a PID-7 of ``""`` quarantined the patient
    as ``bad_birth_date`` and a PID-5 of ``""`` was stored as the name ``""``.
    """
    mrn, _authority = _mrn(pid, loc)
    name = pid.reps(5)
    parts = (*name[0][1:3], name[0][0]) if name else ()
    full = " ".join(p for p in parts if p.strip() and not _is_null(p)).strip()
    sex, born = pid.comp(8), pid.comp(7)
    deleted_name = not full and any(_is_null(p) for p in parts)  # "" (or ""^"")
    sent = {"sex": sex, "name": HL7_NULL if deleted_name else full, "birth_date": born}
    return PatientRecord(
        ref=ref,
        sex="unknown" if _is_null(sex) else _SEX.get(sex.upper()[:1], "unknown"),
        mrn=mrn,
        name=full or None,
        birth_date=_birth_date(born),
        source_ref=loc,
        absent=frozenset(k for k, v in sent.items() if not v.strip()),
    )


def _sent(text: str) -> str | None:
    """A field's text, or None when it is empty or the HL7 null ``""``."""
    return None if not text.strip() or _is_null(text) else text


def _is_null(text: str) -> bool:
    """Whether a field (or component) is the HL7 null ``""``: delete the stored value."""
    return text.strip() == HL7_NULL


def _birth_date(text: str) -> date | None:
    """PID-7 as a date; None when empty, the HL7 null ``""`` (the sender deletes the
    birth date: not an unreadable one) or partial (a year, a month: no day to compare
    measurements against, as for a partial FHIR birthDate).

    Raises:
        Problem: ``bad_birth_date`` (not a date such as ``19501399``) or
            ``time_out_of_range``. The message does not repeat the value: a birth date
            is an identifier.
    """
    text = text.strip()
    if not text or _is_null(text):
        return None
    m = DTM.match(text)
    if m is None:
        raise Problem("bad_birth_date", "PID-7 birth date is not an HL7 date (YYYYMMDD)")
    if not m.group(2) or not m.group(3):
        return None
    try:
        born = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        check_year(born, "PID-7 birth date")
    except TimeOutOfRange as exc:
        raise Problem(exc.code, str(exc)) from None
    except ValueError:
        raise Problem("bad_birth_date", "PID-7 birth date is not a calendar date") from None
    return born


def _encounter(
    pv1: Seg,
    evn: Seg | None,
    patient_ref: str,
    loc: str,
    pseudonym: Pseudonym,
    tz: tzinfo,
    batch: RecordBatch,
    *,
    is_adt: bool,
    discharging: bool = False,
    version: str | None = None,
) -> str | None:
    """The visit's encounter reference; ADT messages also create or complete it.

    In an ORU, PV1 only points at the visit (its admit time is usually absent): results
    join the encounter an ADT^A01 created, and are quarantined if there is none.
    """
    visit = pv1.comp(19)
    if not is_adt and not pv1.comp(44):
        return visit_ref(visit, patient_ref, None, pseudonym) if visit else None
    # The HL7 null "" in PV1-45 deletes the discharge time: the stay is going on (the
    # effect of an A13, as a FHIR Encounter in progress has). A discharge message cannot
    # say so, and an admission time cannot be deleted: both are refused by name.
    discharge_deleted = _is_null(pv1.comp(45))
    try:
        if _is_null(pv1.comp(44)):
            raise Problem(
                "null_time", 'PV1-44 admit time is the HL7 null ""; a stay keeps its admission'
            )
        if discharge_deleted and discharging:
            raise Problem(
                "null_time", 'PV1-45 discharge time is the HL7 null "" in a discharge (ADT^A03)'
            )
        admitted = parse_dtm(pv1.comp(44), tz=tz, what="PV1-44 admit time")
        admission_known = admitted is not None
        if admitted is None and evn is not None:
            admitted = parse_dtm(evn.comp(6) or evn.comp(2), tz=tz, what="EVN event time")
        discharged = (
            None
            if discharge_deleted
            else parse_dtm(pv1.comp(45), tz=tz, what="PV1-45 discharge time")
        )
    except ValueError as exc:
        admitted, discharged, problem, admission_known = None, None, str(exc), False
        code = getattr(exc, "code", "no_time")
    else:
        problem = "no admit time (PV1-44 or EVN)" if admitted is None else ""
        code = "no_time"
    ref = visit_ref(visit, patient_ref, admitted, pseudonym)
    # The HL7 null "" deletes the stored unit or admission source (an empty field keeps
    # it): before, a PV1-3 of "" was stored as a unit named "".
    unit, source = pv1.comp(3, 1), pv1.comp(14)
    deletable: dict[DeletableField, str] = {"unit": unit, "admission_source": source}
    cleared = frozenset(name for name, text in deletable.items() if _is_null(text))
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
            unit=_sent(unit),
            admission_source=_sent(source),
            cleared=cleared,
            in_progress_stated=discharge_deleted,
            source_ref=loc,
            version=version,
            admission_known=admission_known,
        )
    )
    return ref


def _version(msh: Seg, tz: tzinfo) -> str | None:
    """MSH-7 (message time) as a sortable UTC text, or None when absent or unreadable."""
    try:
        at = parse_dtm(msh.comp(7), tz=tz, what="MSH-7 message time")
    except ValueError:
        return None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") if at else None


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
