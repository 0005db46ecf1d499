"""HL7 v2 cancellations: ADT^A11 withdraws the visit's stay, ADT^A13 reopens it.

Before, both were unsupported message types (exit 2 for a file, AR over MLLP): an
admission cancelled in the EHR stayed on the ward, in progress and scored, and a stay
whose discharge was cancelled stayed discharged and unscored. Through ``vitalcast ingest
hl7`` (click's runner, in this process) on PostgreSQL with a champion (the MLLP
listener's ACKs: test_hl7_mllp.py): an A11 newer than the stored version withdraws the
stay (kept, off the ward, not rescored); an older one withdraws nothing; one for a visit
never stored is quarantined. An A13 newer than the A03 reopens the stay, which is
rescored; the same A03 again does not discharge it once more; a withdrawn stay stays
withdrawn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from tests.hl7_samples import ADT_A01, ADT_A03, ORU_R01, adt_cancel
from tests.ingest_cli import count_rows, ingest_json, only_stay
from vitalcast.clinical.tables import Encounter, Patient
from vitalcast.config import Settings
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.modeling.tables import Prediction
from vitalcast.security.tables import AuditEvent

# ADT_A01 is sent at 2024-03-01 08:00, ADT_A03 at 2024-03-05 12:00 (MSH-7).
A11 = adt_cancel("A11", "20240301120000", "CAN0011")
A13 = adt_cancel("A13", "20240306090000", "CAN0013")
# A later result of the same visit: a new reading, which would rescore a stay in progress.
ORU_LATER = (
    ORU_R01.replace("ORU0001", "ORU0002")
    .replace("20240301095500", "20240301115500")
    .replace("|92|", "|131|")
)
IDENTIFIERS = ("MRN0001", "V0001", "Testpatient", "2024", "1950")


def _ingest(settings: Settings, tmp_path: Path, name: str, *messages: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.hl7"
    path.write_text("\r".join(messages), encoding="utf-8")
    report, result = ingest_json(settings, "hl7", str(path))
    for identifier in IDENTIFIERS:  # neither the report nor the logs name the patient
        assert identifier not in result.output
    return report


@pytest.fixture
def ward(client: FlaskClient, creds: Credentials) -> Callable[[], int]:
    """How many stays the ward API lists, to a clinician."""
    reader = creds.api_key("clinician")
    return lambda: int(client.get("/api/v1/patients", headers=reader).get_json()["total"])


def _events(engine: Engine, name: str) -> list[tuple[str | None, str | None, Any]]:
    with Session(engine) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.event == name)).all()
        return [(e.patient_id, e.resource, (e.details or {}).get("reason")) for e in rows]


@pytest.mark.usefixtures("champion")
def test_a11_withdraws_the_stay_which_leaves_the_ward_and_the_scoring(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    client: FlaskClient,
    creds: Credentials,
    ward: Callable[[], int],
) -> None:
    first = _ingest(settings, tmp_path, "admit", ADT_A01, ORU_R01)
    assert first["rescored"]["stays"] == 1
    assert ward() == 1

    report = _ingest(settings, tmp_path, "cancel", A11)
    assert report["withdrawn"] == [
        {"location": "cancel.hl7:msg[1]#CAN0011.PV1", "reason_code": "cancelled"}
    ]
    assert report["by_kind"]["encounter"] == {
        "received": 1,
        "stored": 1,
        "duplicates": 0,
        "quarantined": 0,
    }
    assert report["by_kind"]["patient"]["received"] == 0  # a cancellation stores no patient
    stay = only_stay(pg_engine)
    assert (stay.withdrawn_reason, stay.discharged_at) == ("cancelled", None)
    assert stay.withdrawn_at is not None
    assert not stay.in_progress
    assert ward() == 0

    # A later result of the visit is stored with the stay but scores nothing.
    later = _ingest(settings, tmp_path, "later", ORU_LATER)
    assert later["by_kind"]["observation"]["stored"] == 3  # new times: new readings
    assert later["rescored"]["stays"] == 0
    assert count_rows(pg_engine, Prediction) == 1  # the risk before the A11, in its history

    # The patient page's FHIR view says what the EHR said; the trail names the patient.
    with Session(pg_engine) as session:
        public_id = session.scalars(select(Patient.public_id)).one()
    fhir = client.get(
        "/fhir/Encounter",
        query_string={"patient": public_id},
        headers=creds.api_key("clinician"),
    ).get_json()
    assert [e["resource"]["status"] for e in fhir["entry"]] == ["cancelled"]
    assert _events(pg_engine, "encounter.withdrawn") == [
        (public_id, f"Encounter/{stay.public_id}", "cancelled")
    ]

    # The same A11 again is a duplicate; the admission again does not reopen the stay.
    again = _ingest(settings, tmp_path, "again", A11, ADT_A01)
    assert again["withdrawn"] == []
    assert again["by_kind"]["encounter"]["duplicates"] == 2
    assert only_stay(pg_engine).withdrawn_at == stay.withdrawn_at


def test_an_a11_older_than_the_stored_version_withdraws_nothing(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    update = (
        ADT_A01.replace("ADT^A01", "ADT^A08")
        .replace("ADM0001", "ADM0008")
        .replace("20240301080000", "20240302090000")
    )
    _ingest(settings, tmp_path, "admit", ADT_A01, update)
    # Sent before the A08 (MSH-7 on 03-01 12:00, the A08 on 03-02): an old message.
    late = _ingest(settings, tmp_path, "late", A11)
    assert late["withdrawn"] == []
    assert late["by_kind"]["encounter"]["duplicates"] == 1
    assert only_stay(pg_engine).in_progress

    # Without MSH-7 it cannot be ordered after the stored stay: quarantined, saying so.
    unordered = _ingest(settings, tmp_path, "unordered", adt_cancel("A11", "", "CAN0099"))
    [reject] = unordered["rejects"]
    assert reject["reason_code"] == "cancelled"
    assert "HL7 MSH-7" in reject["reason"]
    assert "kept in progress" in reject["reason"]
    assert only_stay(pg_engine).in_progress


def test_an_a11_of_a_visit_never_stored_is_quarantined(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    _ingest(settings, tmp_path, "admit", ADT_A01)
    unknown = _ingest(
        settings, tmp_path, "other", adt_cancel("A11", "20240302090000", "CAN0042", "V0042")
    )
    assert unknown["withdrawn"] == []
    assert unknown["quarantined"] == 1
    [reject] = unknown["rejects"]
    assert reject["reason_code"] == "cancelled"
    assert reject["location"] == "other.hl7:msg[1]#CAN0042.PV1"
    assert "ADT^A11" in reject["reason"]
    assert "no such stay is stored, so nothing was withdrawn" in reject["reason"]
    assert only_stay(pg_engine).in_progress  # the stored stay of another visit is untouched
    assert count_rows(pg_engine, Encounter) == 1
    with Session(pg_engine) as session:
        assert session.scalars(select(QuarantineItem.reason_code)).all() == ["cancelled"]


@pytest.mark.usefixtures("champion")
def test_a13_reopens_the_discharged_stay_which_is_scored_again(
    settings: Settings, pg_engine: Engine, tmp_path: Path, ward: Callable[[], int]
) -> None:
    stay_file = (ADT_A01, ORU_R01, ADT_A03)
    first = _ingest(settings, tmp_path, "stay", *stay_file)
    assert first["rescored"]["stays"] == 0  # discharged: not scored
    assert only_stay(pg_engine).discharged_at is not None
    assert ward() == 0

    report = _ingest(settings, tmp_path, "cancel", A13)
    assert report["discharge_cancelled"] == [{"location": "cancel.hl7:msg[1]#CAN0013.PV1"}]
    assert report["by_kind"]["encounter"]["stored"] == 1
    assert report["quarantined"] == 0
    assert report["rescored"]["stays"] == 1
    stay = only_stay(pg_engine)
    assert stay.discharged_at is None
    assert stay.in_progress
    assert ward() == 1
    with Session(pg_engine) as session:
        (prediction,) = session.scalars(select(Prediction).where(Prediction.role == "champion"))
        public_id = session.scalars(select(Patient.public_id)).one()
    assert prediction.encounter_id == stay.id
    assert _events(pg_engine, "encounter.discharge_cancelled") == [
        (public_id, f"Encounter/{stay.public_id}", "discharge_cancelled")
    ]

    # The same file again (its A03 older than the A13): the stay stays in progress.
    again = _ingest(settings, tmp_path, "stay", *stay_file)
    assert again["stored"] == 0
    assert only_stay(pg_engine).in_progress
    # A discharge sent after the A13 discharges it.
    discharge = (
        ADT_A03.replace("ADM0002", "ADM0003")
        .replace("20240305120000", "20240307120000")
        .replace("20240305113000", "20240307113000")
    )
    _ingest(settings, tmp_path, "discharge", discharge)
    assert not only_stay(pg_engine).in_progress


def test_an_a13_older_than_the_discharge_reopens_nothing(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    _ingest(settings, tmp_path, "stay", ADT_A01, ADT_A03)
    old = _ingest(settings, tmp_path, "old", adt_cancel("A13", "20240304090000", "CAN0130"))
    assert old["discharge_cancelled"] == []
    assert old["by_kind"]["encounter"]["duplicates"] == 1
    assert only_stay(pg_engine).discharged_at is not None


def test_a13_of_a_withdrawn_stay_keeps_it_withdrawn(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    _ingest(settings, tmp_path, "stay", ADT_A01, ADT_A03)
    cancel = adt_cancel("A11", "20240305130000", "CAN0111")
    assert len(_ingest(settings, tmp_path, "cancel", cancel)["withdrawn"]) == 1

    report = _ingest(settings, tmp_path, "reopen", A13)
    assert report["discharge_cancelled"] == []
    [reject] = report["rejects"]
    assert reject["reason_code"] == "withdrawn_stay"
    assert "a withdrawal is final" in reject["reason"]
    stay = only_stay(pg_engine)
    assert stay.withdrawn_reason == "cancelled"
    assert stay.discharged_at is not None
    assert not stay.in_progress
    assert _events(pg_engine, "encounter.discharge_cancelled") == []


def test_an_a13_before_its_a03_keeps_the_late_a03_from_discharging(
    settings: Settings, pg_engine: Engine, tmp_path: Path
) -> None:
    """Messages can come out of order (a folder read by file name): the A13 cancelling a
    discharge, then the A03 it cancels, older than it. The stay stays in progress."""
    _ingest(settings, tmp_path, "admit", ADT_A01)
    early = _ingest(settings, tmp_path, "early", A13)
    assert early["discharge_cancelled"] == []  # nothing to reopen yet
    assert early["updated"] == {"encounter": 1}  # the stay's version is the A13's
    late = _ingest(settings, tmp_path, "late", ADT_A03)
    assert late["by_kind"]["encounter"]["duplicates"] == 1
    assert only_stay(pg_engine).in_progress
