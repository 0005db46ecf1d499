"""Synthetic HL7 v2 messages (no real patients) shared by the HL7 tests, and how to read
the acknowledgements a listener answers them with."""

from __future__ import annotations


def msa(ack: str) -> list[str]:
    """The fields of an ACK's MSA segment: ``[1]`` the code (AA/AE/AR), ``[2]`` the id of
    the message acknowledged, ``[3]`` the text."""
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")


ADT_A01 = (
    "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240301080000||ADT^A01|ADM0001|P|2.5\r"
    "EVN|A01|20240301080000\r"
    "PID|1||MRN0001^^^HOSP^MR||Testpatient^Alpha||19500102|F\r"
    "PV1|1|I|MICU^12^A||||||||||||||||V0001|||||||||||||||||||||||||20240301075500+0000"
)
ADT_A03 = (
    "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240305120000||ADT^A03|ADM0002|P|2.5\r"
    "EVN|A03|20240305120000\r"
    "PID|1||MRN0001^^^HOSP^MR||Testpatient^Alpha||19500102|F\r"
    "PV1|1|I|MICU^12^A||||||||||||||||V0001|||||||||||||||||||||||||20240301075500+0000|20240305113000+0000"
)
ORU_R01 = (
    "MSH|^~\\&|MON|ICU|VITALCAST|HOSP|20240301100000||ORU^R01|ORU0001|P|2.5\r"
    "PID|1||MRN0001^^^HOSP^MR||Testpatient^Alpha||19500102|F\r"
    "PV1|1|I|MICU^12^A||||||||||||||||V0001\r"
    "OBR|1|||VITALS|||20240301095500+0000\r"
    "OBX|1|NM|8867-4^Heart rate^LN||92|/min|||||F|||20240301095500+0000||||MON-7\r"
    "OBX|2|NM|8310-5^Body temperature^LN||101.3|[degF]|||||F\r"  # OBR-7 time; °F -> °C
    "OBX|3|NM|2345-7^Glucose^LN||7.2|mmol/L|||||F\r"  # mmol/L -> mg/dL
    "OBX|4|NM|8867-4^Heart rate^LN||abc|/min|||||F\r"  # not a number
    "OBX|5|NM|8480-6^Systolic BP^LN||120|furlongs|||||F\r"  # unknown unit
    "OBX|6|NM|9279-1^Resp rate^LN||18|/min|||||X\r"  # result cannot be obtained
    "OBX|7|ST|99999-9^Something else^LN||text|||||F\r"  # not in the vocabulary
    "OBX|8|SN|2524-7^Lactate^LN||>^10|mmol/L|||||F"  # a comparator is not an exact value
)
# ORU^R01 with two PATIENT_RESULT groups (v2.5 allows several): each PID's results are
# its own. The second OBR has no OBR-7 time in its OBX: never the first group's.
ORU_TWO_PATIENTS = (
    "MSH|^~\\&|LAB|HOSP|VC|VC|20240501100000+0000||ORU^R01|E1|P|2.5\r"
    "PID|1||MRNCCC1^^^HOSP^MR||Gamma^Cat||19600101|F\r"
    "OBR|1|||x|||20240503110000+0000\r"
    "OBX|1|NM|8867-4^HR^LN||61|/min|||||F\r"
    "PID|2||MRNDDD2^^^HOSP^MR||Delta^Dan||19600101|M\r"
    "OBR|1|||x|||20240503120000+0000\r"
    "OBX|1|NM|8867-4^HR^LN||62|/min|||||F"
)
# A wrong field separator (':' where '|' is meant): the whole text is one "MSH-2".
WRONG_SEPARATOR = (
    "MSH:^~\\&|LAB|HOSP|VC|VC|20240501100000+0000||ADT^A01|L1|P|2.5\r"
    "PID|1||MRN4242^^^HOSP^MR||Secretname^Jane||19600101|F"
)


def adt_cancel(trigger: str, stamp: str, control: str, visit: str = "V0001") -> str:
    """An ADT^A11 (cancel admit) or ADT^A13 (cancel discharge) of the patient of ADT_A01,
    sent at ``stamp`` (MSH-7, the version the store orders ADT messages by; empty for
    none), for visit ``visit`` (PV1-19)."""
    return (
        f"MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|{stamp}||ADT^{trigger}|{control}|P|2.5\r"
        f"EVN|{trigger}|{stamp}\r"
        "PID|1||MRN0001^^^HOSP^MR||Testpatient^Alpha||19500102|F\r"
        f"PV1|1|I|MICU^12^A||||||||||||||||{visit}"
    )
