"""A result the source takes back leaves the store, and the stay is rescored without it.

Before, an HL7 OBX-11 of W (wrong) or a FHIR Observation version ``entered-in-error``
was quarantined like any withdrawn result, and the value it took back (a potassium of
7.9 from a haemolysed sample) stayed stored, feeding the patient's features and risk.
Through ``vitalcast ingest`` on PostgreSQL with a champion: the newer retraction removes
the stored result (kept in the quarantine as ``retracted``), the stay is rescored, the
patient's audit trail says so; an older retraction, or one for a result never stored,
removes nothing and is quarantined saying which.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.ingest_cli import count_rows, fhir_heart_rate, ingest_fhir_resources, ingest_json
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.config import Settings
from vitalcast.ingest.quarantine import decrypt_raw
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.modeling.tables import Prediction
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.tables import AuditEvent

START = datetime.now(UTC) - timedelta(hours=3)
PATIENT = {"resourceType": "Patient", "id": "rt-pat", "gender": "female"}
STAY = {
    "resourceType": "Encounter",
    "id": "rt-stay",
    "status": "in-progress",
    "class": {"code": "IMP"},
    "subject": {"reference": "Patient/rt-pat"},
    "period": {"start": START.isoformat()},
}


def _reading(version: str, status: str = "final") -> dict[str, Any]:
    reading = fhir_heart_rate("rt-hr", "rt-pat", "rt-stay", START + timedelta(minutes=30))
    return reading | {"meta": {"versionId": version}, "status": status}


def _retracted(engine: Engine) -> list[tuple[str, str | None, bool]]:
    """(reason code, code, names a patient) of the quarantine's removed results."""
    with Session(engine) as session:
        rows = session.scalars(
            select(QuarantineItem).where(QuarantineItem.reason_code == "retracted")
        ).all()
        return [(r.reason_code, r.code, r.patient_id is not None) for r in rows]


@pytest.mark.usefixtures("champion")
def test_fhir_entered_in_error_removes_the_stored_reading_and_rescores(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    first = ingest_fhir_resources(settings, tmp_path, "v1", PATIENT, STAY, _reading("1"))
    assert first["rescored"]["stays"] == 1
    assert count_rows(pg_engine, Observation) == 1

    # An older version saying entered-in-error does not remove the newer stored one.
    ingest_fhir_resources(settings, tmp_path, "v2", _reading("3"))
    stale = ingest_fhir_resources(settings, tmp_path, "old", _reading("2", "entered-in-error"))
    assert [r["reason"] for r in stale["rejects"]] == [
        "8867-4: status is entered-in-error; the stored result is of this version or newer,"
        " so it is kept"
    ]
    assert count_rows(pg_engine, Observation) == 1
    scored = count_rows(pg_engine, Prediction)

    report = ingest_fhir_resources(settings, tmp_path, "v4", _reading("4", "entered-in-error"))
    assert report["retracted"] == [
        {
            "location": "v4.json#Bundle.entry[0].resource(Observation/rt-hr)",
            "code": "8867-4",
            "reason_code": "entered_in_error",
        }
    ]
    assert (report["stored"], report["quarantined"]) == (1, 0)
    assert count_rows(pg_engine, Observation) == 0
    # Rescored without the reading: a new risk, the old one kept in the history.
    assert report["rescored"]["stays"] == 1
    assert count_rows(pg_engine, Prediction) == scored + 1
    assert _retracted(pg_engine) == [("retracted", "8867-4", True)]
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "observation.retracted")
        ).all()
    assert [(e.patient_id, e.action, (e.details or {})["code"]) for e in events] == [
        (public_id, "D", "8867-4")
    ]

    # The same retraction again has nothing left to remove.
    again = ingest_fhir_resources(settings, tmp_path, "v4-again", _reading("4", "entered-in-error"))
    assert again["retracted"] == []
    assert again["rejects"][0]["reason"].endswith(
        "no such result is stored, so nothing was retracted; the retraction is kept, and"
        " that result, if it comes later, is quarantined, not used"
    )


def test_a_result_after_its_retraction_is_quarantined_and_a_correction_is_stored(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    """Delivered out of order, the retraction removed nothing and the result it took
    back was then stored and scored. The retraction is now remembered: that result, or
    any version as old, is quarantined as ``retracted``; a newer one is a correction."""
    early = ingest_fhir_resources(
        settings, tmp_path, "v2", PATIENT, STAY, _reading("2", "entered-in-error")
    )
    assert [r["reason_code"] for r in early["rejects"]] == ["entered_in_error"]
    for version in ("1", "2"):
        late = ingest_fhir_resources(settings, tmp_path, f"late-{version}", _reading(version))
        assert [(r["reason_code"], r["reason"]) for r in late["rejects"]] == [
            (
                "retracted",
                "8867-4: this result was taken back by a retraction received before it"
                " (HL7 OBX-11 W/D/X or FHIR entered-in-error/cancelled); it is not stored",
            )
        ]
        assert late["by_kind"]["observation"]["stored"] == 0
        assert count_rows(pg_engine, Observation) == 0
    corrected = ingest_fhir_resources(settings, tmp_path, "v3", _reading("3"))
    assert corrected["rejects"] == []
    assert count_rows(pg_engine, Observation) == 1


def test_a_value_and_its_retraction_in_one_bundle_store_nothing(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    report = ingest_fhir_resources(
        settings, tmp_path, "both", PATIENT, STAY, _reading("1"), _reading("2", "cancelled")
    )
    assert count_rows(pg_engine, Observation) == 0
    assert [r["reason_code"] for r in report["retracted"]] == ["cancelled"]
    # An unversioned retraction cannot be ordered after anything: refused, as before.
    unversioned = {k: v for k, v in _reading("9", "entered-in-error").items() if k != "meta"}
    refused = ingest_fhir_resources(settings, tmp_path, "nover", unversioned)
    assert [r["reason_code"] for r in refused["rejects"]] == ["entered_in_error"]


def _oru(stamp: str, control: str, status: str, order: str = "FL55") -> str:
    """A potassium of 7.9 and a sodium of 140 under filler order ``order``, sent at
    ``stamp`` with OBX-11 ``status``, for the patient the ADT of :func:`_adt` admits."""
    return (
        f"MSH|^~\\&|LAB|HOSP|VC|HOSP|{stamp}||ORU^R01|{control}|P|2.5\r"
        "PID|1||MRNRT1^^^HOSP^MR||Kay^Kim||19600101|F\r"
        f"PV1|1|I|MICU^1^A||||||||||||||||VRT1\r"
        f"OBR|1|PL55|{order}^LAB|CHEM|||{_hl7_time(START + timedelta(minutes=40))}\r"
        f"OBX|1|NM|2823-3^Potassium^LN||7.9|mmol/L|||||{status}\r"
        f"OBX|2|NM|2951-2^Sodium^LN||140|mmol/L|||||{status}\r"
    )


def _adt() -> str:
    return (
        f"MSH|^~\\&|ADT|HOSP|VC|HOSP|{_hl7_time(START)}||ADT^A01|ART1|P|2.5\r"
        f"EVN|A01|{_hl7_time(START)}\r"
        "PID|1||MRNRT1^^^HOSP^MR||Kay^Kim||19600101|F\r"
        "PV1|1|I|MICU^1^A||||||||||||||||VRT1|||||||||||||||||||||||||"
        f"{_hl7_time(START)}\r"
    )


def _hl7_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _hl7(settings: Settings, tmp_path: Path, name: str, text: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.hl7"
    path.write_text(text)
    return ingest_json(settings, "hl7", str(path))[0]


@pytest.mark.usefixtures("champion")
def test_hl7_wrong_result_removes_both_results_of_the_order(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    sent = _hl7(
        settings,
        tmp_path,
        "result",
        _adt() + _oru(_hl7_time(START + timedelta(hours=1)), "R1", "F"),
    )
    assert sent["by_kind"]["observation"]["stored"] == 2
    # A withdrawal sent before the result (an older MSH-7) removes nothing.
    early = _hl7(
        settings, tmp_path, "early", _oru(_hl7_time(START + timedelta(minutes=50)), "R0", "W")
    )
    assert early["retracted"] == []
    assert {r["reason_code"] for r in early["rejects"]} == {"withdrawn_result"}
    assert count_rows(pg_engine, Observation) == 2

    wrong = _hl7(
        settings, tmp_path, "wrong", _oru(_hl7_time(START + timedelta(hours=2)), "R2", "W")
    )
    assert [(r["code"], r["reason_code"]) for r in wrong["retracted"]] == [
        ("2823-3", "withdrawn_result"),
        ("2951-2", "withdrawn_result"),
    ]
    assert count_rows(pg_engine, Observation) == 0
    assert wrong["rescored"]["stays"] == 1
    assert sorted(_retracted(pg_engine)) == [
        ("retracted", "2823-3", True),
        ("retracted", "2951-2", True),
    ]
    # The removed value is kept, encrypted, for review: the raw row names its value.
    with Session(pg_engine) as session:
        kept = session.scalars(
            select(QuarantineItem)
            .where(QuarantineItem.code == "2823-3")
            .where(QuarantineItem.reason_code == "retracted")
        ).one()
    assert kept.raw_enc is not None
    assert b"7.9" not in kept.raw_enc
    removed = json.loads(decrypt_raw(cipher_from_settings(settings), kept) or "")
    assert (removed["value"], removed["unit"], removed["source"]) == (7.9, "mmol/L", "hl7v2")
    # The same result sent again (its file imported again) is not stored again.
    resent = _hl7(
        settings,
        tmp_path,
        "resent",
        _oru(_hl7_time(START + timedelta(hours=1)), "R1", "F"),
    )
    assert [r["reason_code"] for r in resent["rejects"]] == ["retracted", "retracted"]
    assert count_rows(pg_engine, Observation) == 0
    # A withdrawal without an order number cannot name its result: refused, as before.
    no_order = _oru(_hl7_time(START + timedelta(hours=3)), "R3", "W").replace(
        "OBR|1|PL55|FL55^LAB|", "OBR|1|||"
    )
    refused = _hl7(settings, tmp_path, "no-order", no_order)
    assert [r["reason"] for r in refused["rejects"]] == [
        "OBX-11 status W: result was wrong",
        "OBX-11 status W: result was wrong",
    ]
    assert json.dumps(refused).count("MRNRT1") == 0
