"""HL7 v2 parsing: segments to canonical records, times, units and clear rejections."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tests.hl7_samples import ADT_A01, ORU_R01, adt_cancel
from vitalcast.ingest.mllp import build_ack
from vitalcast.ingest.sources.hl7v2 import (
    Hl7FormatError,
    parse_dtm,
    parse_message,
    split_messages,
)


def pseudonym(text: str) -> str:
    return hashlib.sha256(b"test-key" + text.encode()).hexdigest()


def test_adt_a01_gives_patient_and_encounter_without_identifiers_in_refs() -> None:
    msg = parse_message(ADT_A01, origin="f.hl7", pseudonym=pseudonym)
    assert (msg.message_type, msg.control_id) == ("ADT^A01", "ADM0001")
    (patient,) = msg.unit.batch.patients
    assert (patient.sex, patient.mrn, patient.name) == ("female", "MRN0001", "Alpha Testpatient")
    assert patient.birth_date is not None
    assert patient.birth_date.isoformat() == "1950-01-02"
    assert "MRN0001" not in patient.ref
    (enc,) = msg.unit.batch.encounters
    assert enc.unit == "MICU"
    assert enc.kind == "inpatient"
    assert enc.admitted_at == datetime(2024, 3, 1, 7, 55, tzinfo=UTC)
    assert "V0001" not in enc.ref
    assert msg.unit.batch.received == 2


def test_oru_r01_observations_and_rejections() -> None:
    msg = parse_message(ORU_R01, origin="f.hl7", pseudonym=pseudonym)
    batch = msg.unit.batch
    kept = {o.source_ref.rsplit(".", 1)[1]: o for o in batch.observations}
    rejected = {r.location.rsplit(".", 1)[1]: r.reason_code for r in batch.rejected}
    assert rejected == {
        "OBX[4]": "non_numeric_value",
        "OBX[6]": "withdrawn_result",
        "OBX[8]": "non_numeric_value",
    }
    # Unit conversion and unknown units/codes are the store's rules; they stay records here.
    assert set(kept) == {"OBX[1]", "OBX[2]", "OBX[3]", "OBX[5]", "OBX[7]"}
    assert kept["OBX[1]"].device_id == "MON-7"
    assert kept["OBX[2]"].effective_at == datetime(2024, 3, 1, 9, 55, tzinfo=UTC)  # from OBR-7
    assert kept["OBX[7]"].value_text == "text"
    assert batch.received == 1 + 8  # PID and 8 OBX; in an ORU, PV1 only points at the visit
    assert batch.encounters == []


def test_times_without_offset_use_the_sender_timezone() -> None:
    paris = ZoneInfo("Europe/Paris")
    assert parse_dtm("202407011200", tz=paris, what="t") == datetime(2024, 7, 1, 10, tzinfo=UTC)
    assert parse_dtm("20240701120000-0500", tz=paris, what="t") == datetime(
        2024, 7, 1, 17, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="no time of day"):
        parse_dtm("20240701", tz=UTC, what="t")
    with pytest.raises(ValueError, match="not an HL7 date/time"):
        parse_dtm("yesterday", tz=UTC, what="t")


def test_times_outside_the_clinical_range_raise_value_errors_not_overflow() -> None:
    for text in ("99991231235959-1400", "00010101000000+1400", "17991231235959"):
        with pytest.raises(ValueError, match="outside the accepted range 1800-2200"):
            parse_dtm(text, tz=UTC, what="t")
    with pytest.raises(ValueError, match="impossible UTC offset"):
        parse_dtm("20240101120000+9999", tz=UTC, what="t")
    with pytest.raises(ValueError, match="not a calendar"):
        parse_dtm("20240231120000", tz=UTC, what="t")


@pytest.mark.parametrize(
    ("pid7", "code"), [("19501399", "bad_birth_date"), ("01000101", "time_out_of_range")]
)
def test_unreadable_birth_date_quarantines_the_patient(pid7: str, code: str) -> None:
    msg = parse_message(
        ADT_A01.replace("||19500102|", f"||{pid7}|"), origin="f.hl7", pseudonym=pseudonym
    )
    batch = msg.unit.batch
    assert batch.patients == []
    (rejected,) = batch.rejected
    assert (rejected.location, rejected.reason_code, rejected.kind) == (
        "f.hl7#ADM0001.PID",
        code,
        "patient",
    )
    assert pid7 not in rejected.reason  # a birth date is an identifier
    (enc,) = batch.encounters  # the stay still refers to the person (known or not)
    assert batch.received == 2
    assert enc.patient_ref.startswith("mrn:")


def test_the_hl7_null_deletes_demographics_and_an_empty_field_keeps_them() -> None:
    """``""`` in PID-5, PID-7 or PID-8 is the HL7 null: the sender deletes the value. A
    PID-7 of ``""`` quarantined the patient as ``bad_birth_date`` and a PID-5 of ``""``
    became the name ``""``. Now each is none (not ``absent``, which keeps the stored
    value), while an empty field is still "not sent"."""
    pid = "PID|1||MRN0001^^^HOSP^MR||Testpatient^Alpha||19500102|F"
    null = 'PID|1||MRN0001^^^HOSP^MR||""||""|""'
    msg = parse_message(ADT_A01.replace(pid, null), origin="f.hl7", pseudonym=pseudonym)
    assert msg.unit.batch.rejected == []
    (patient,) = msg.unit.batch.patients
    assert (patient.name, patient.birth_date, patient.sex) == (None, None, "unknown")
    assert patient.absent == frozenset()
    assert patient.mrn == "MRN0001"

    empty = "PID|1||MRN0001^^^HOSP^MR|||||"
    (bare,) = parse_message(
        ADT_A01.replace(pid, empty), origin="f", pseudonym=pseudonym
    ).unit.batch.patients
    assert bare.absent == {"name", "birth_date", "sex"}

    # A null component deletes that part of the name only.
    given = ADT_A01.replace("Testpatient^Alpha", 'Testpatient^""')
    (named,) = parse_message(given, origin="f", pseudonym=pseudonym).unit.batch.patients
    assert named.name == "Testpatient"


def test_split_messages_accepts_cr_lf_and_crlf() -> None:
    text = ADT_A01.replace("\r", "\n") + "\r\n\r\n" + ORU_R01.replace("\r", "\r\n")
    parts = split_messages(text)
    assert len(parts) == 2
    assert parts[1].startswith("MSH")
    assert parts[1].count("\r") == ORU_R01.count("\r")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "not an HL7 v2 message"),
        (ADT_A01.replace("ADT^A01", "ADT^A99"), "message type ADT^A99 is not supported"),
        (ADT_A01.split("\rPID")[0], "without a PID segment"),
        (ADT_A01.replace("MRN0001^^^HOSP^MR", ""), "PID-3 (patient identifier) is empty"),
    ],
)
def test_unreadable_messages_give_clear_errors(text: str, message: str) -> None:
    with pytest.raises(
        Hl7FormatError, match=message.replace("^", r"\^").replace("(", r"\(").replace(")", r"\)")
    ) as info:
        parse_message(text, origin="f.hl7", pseudonym=pseudonym)
    assert "MRN0001" not in str(info.value)
    assert "Testpatient" not in str(info.value)


def test_ack_escapes_delimiters_and_carries_err_for_rejects() -> None:
    ack = build_ack("AR", control_id="X1", text="bad | field ^ here", trigger="R01")
    msa, err = ack.split("\r")[1:3]
    assert msa == "MSA|AR|X1|bad \\F\\ field \\S\\ here"
    assert err.startswith("ERR|||200^Unsupported message type^HL70357|E")


def test_an_ack_cannot_be_given_segments_through_the_messages_version() -> None:
    """MSH-12 is read unescaped, so ``2.5\\X0D\\MSA|AR|...`` held a CR and a second MSA:
    echoed raw, the sender's engine read a forged reject before the real AA."""
    text = ADT_A01.replace("|P|2.5\r", "|P|2.5\\X0D\\MSA\\F\\AR\\F\\ADM0001\r", 1)
    msg = parse_message(text, origin="f.hl7", pseudonym=pseudonym)
    ack = build_ack("AA", control_id=msg.control_id, version=msg.version)
    segments = ack.rstrip("\r").split("\r")
    assert [s[:3] for s in segments] == ["MSH", "MSA"]
    assert segments[1] == "MSA|AA|ADM0001|"
    assert segments[0].split("|")[11] == "2.5 MSA\\F\\AR\\F\\ADM0001"


def test_reasons_and_errors_never_repeat_field_values() -> None:
    """A time of care is PHI, and a field shifted by a stray delimiter may hold a name."""
    with pytest.raises(ValueError, match="not an HL7 date/time") as info:
        parse_dtm("Secretname", tz=UTC, what="t")
    assert "Secretname" not in str(info.value)
    oru = ORU_R01.replace("F|||20240301095500+0000|", "F|||Secretname|").replace(
        "8480-6^Systolic BP", "SecretnameSecretnameSecretnameSecretname^x"
    )
    reasons = [
        r.reason for r in parse_message(oru, origin="f", pseudonym=pseudonym).unit.batch.rejected
    ]
    assert any("OBX-3 code longer than 32" in r for r in reasons)
    assert not any("Secretname" in r for r in reasons)
    with pytest.raises(Hl7FormatError, match="message type in MSH-9 is not supported") as err:
        parse_message(
            ADT_A01.replace("ADT^A01", "Secretname^Jane"), origin="f", pseudonym=pseudonym
        )
    assert "Secretname" not in str(err.value)


def test_a11_and_a13_name_the_stay_of_the_visit_and_store_no_patient() -> None:
    """The cancellation finds the stay as the A01 named it; its PID changes nothing."""
    (admitted,) = parse_message(ADT_A01, origin="f", pseudonym=pseudonym).unit.batch.encounters
    a11 = parse_message(adt_cancel("A11", "20240302090000", "C1"), origin="f", pseudonym=pseudonym)
    (withdrawal,) = a11.unit.batch.withdrawals
    assert (withdrawal.ref, withdrawal.reason_code) == (admitted.ref, "cancelled")
    assert withdrawal.version == "2024-03-02T09:00:00.000000"
    assert withdrawal.source_ref == "f#C1.PV1"
    a13 = parse_message(adt_cancel("A13", "20240302090000", "C2"), origin="f", pseudonym=pseudonym)
    (reopening,) = a13.unit.batch.discharge_cancellations
    assert (reopening.ref, reopening.version) == (admitted.ref, withdrawal.version)
    for batch in (a11.unit.batch, a13.unit.batch):
        assert (batch.patients, batch.encounters, batch.received) == ([], [], 1)


def test_a11_without_a_visit_is_quarantined_and_never_uses_the_event_time() -> None:
    """Without PV1-19 the stay is the admission at PV1-44; the EVN time of a cancellation
    is when it was cancelled, so a stay admitted then must not be the one withdrawn."""
    no_pv1 = adt_cancel("A11", "20240302090000", "C3").rsplit("\r", 1)[0]
    (rejected,) = parse_message(no_pv1, origin="f", pseudonym=pseudonym).unit.batch.rejected
    assert (rejected.reason_code, rejected.kind) == ("no_visit", "encounter")
    no_visit = adt_cancel("A11", "20240302090000", "C4", visit="")
    batch = parse_message(no_visit, origin="f", pseudonym=pseudonym).unit.batch
    (rejected,) = batch.rejected
    assert rejected.reason_code == "no_visit"
    assert "PV1-19 visit number nor PV1-44 admit time" in rejected.reason
    assert batch.withdrawals == []
    by_admission = no_visit + "|||||||||||||||||||||||||20240301075500+0000"
    (withdrawal,) = parse_message(
        by_admission, origin="f", pseudonym=pseudonym
    ).unit.batch.withdrawals
    assert withdrawal.ref.endswith("@2024-03-01T07:55:00+00:00")


@pytest.mark.parametrize("sn", ["^1^:^128", "^5^-^9", "=^2^+", "^120^/^80"])
def test_an_sn_ratio_or_range_is_not_its_first_number(sn: str) -> None:
    """OBX-5 of type SN is comparator^num1^separator^num2: a ratio or a range stored as
    num1 would be a wrong value (1 mmHg from 1:128), so it is quarantined."""
    text = ORU_R01.split("\rOBX|2|")[0] + f"\rOBX|2|SN|8462-4^DBP^LN||{sn}|mm[Hg]|||||F"
    batch = parse_message(text, origin="f.hl7", pseudonym=pseudonym).unit.batch
    assert [o.source_ref for o in batch.observations] == ["f.hl7#ORU0001.OBX[1]"]
    assert [(r.location, r.reason_code) for r in batch.rejected] == [
        ("f.hl7#ORU0001.OBX[2]", "non_numeric_value")
    ]


def test_an_exact_sn_value_is_stored() -> None:
    text = ORU_R01.split("\rOBX|2|")[0] + "\rOBX|2|SN|8462-4^DBP^LN||=^80|mm[Hg]|||||F"
    batch = parse_message(text, origin="f.hl7", pseudonym=pseudonym).unit.batch
    assert [o.value for o in batch.observations] == [92.0, 80.0]


@pytest.mark.parametrize(
    "local",
    [
        "20241103013000",  # New York's clocks showed 01:30 twice (EDT, then EST)
        "20240310023000",  # and never showed 02:30 (straight from 01:59 EST to 03:00 EDT)
    ],
)
def test_a_local_time_in_a_dst_change_is_refused_not_guessed(local: str) -> None:
    """Without an offset such a time is two instants an hour apart, or none: taking one
    would misplace a reading by an hour, or merge two readings an hour apart."""
    new_york = ZoneInfo("America/New_York")
    with pytest.raises(ValueError, match="daylight-saving") as caught:
        parse_dtm(local, tz=new_york, what="observation time")
    assert getattr(caught.value, "code", None) == "ambiguous_time"
    # With its offset the same wall time is one instant, and is kept.
    assert parse_dtm(f"{local[:8]}013000-0500", tz=new_york, what="t") == datetime(
        int(local[:4]), int(local[4:6]), int(local[6:8]), 6, 30, tzinfo=UTC
    )
    text = ORU_R01.split("\rOBX|1|")[0] + f"\rOBX|1|NM|8867-4^HR^LN||92|/min|||||F|||{local}"
    batch = parse_message(text, origin="f.hl7", pseudonym=pseudonym, tz=new_york).unit.batch
    assert batch.observations == []
    assert [(r.location, r.reason_code) for r in batch.rejected] == [
        ("f.hl7#ORU0001.OBX[1]", "ambiguous_time")
    ]


@pytest.mark.parametrize("value", ["92~140", "=^92~=^140"])
def test_a_repeated_numeric_value_is_quarantined_not_cut_to_its_first(value: str) -> None:
    """OBX-5 ``92~140`` was stored as 92 and 140 dropped without a word."""
    vtype = "SN" if "^" in value else "NM"
    text = ORU_R01.split("\rOBX|1|")[0] + f"\rOBX|1|{vtype}|8867-4^HR^LN||{value}|/min|||||F"
    batch = parse_message(text, origin="f.hl7", pseudonym=pseudonym).unit.batch
    assert batch.observations == []
    (rejected,) = batch.rejected
    assert rejected.reason_code == "non_numeric_value"
    assert "OBX-5 repeats" in rejected.reason
    assert "140" not in rejected.reason
