"""HL7 v2 over a real MLLP socket into real PostgreSQL: ACK after commit, clear NACKs."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, func, select

from tests.hl7_samples import (
    ADT_A01,
    ADT_A03,
    ORU_R01,
    ORU_TWO_PATIENTS,
    WRONG_SEPARATOR,
    adt_cancel,
    msa,
)
from tests.ingest_cli import only_stay
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.db.session import create_db_engine, make_session_factory
from vitalcast.ingest.mllp import MessageHandler, MllpServer, send_messages
from vitalcast.ingest.tables import QuarantineItem
from vitalcast.security.crypto import FieldCipher


@pytest.fixture
def server(mllp_server: MllpServer) -> MllpServer:
    return mllp_server


def test_admit_results_discharge_over_mllp(server: MllpServer, pg_engine: Engine) -> None:
    acks = send_messages("127.0.0.1", server.port, [ADT_A01, ORU_R01, ADT_A03])
    assert [msa(a)[1:3] for a in acks] == [
        ["AA", "ADM0001"],
        ["AA", "ORU0001"],
        ["AA", "ADM0002"],
    ]
    # 8 OBX: 3 stored (°F, mmol/L converted), 5 quarantined; the patient is a duplicate.
    assert msa(acks[1])[3].startswith("stored 3, duplicates 1, quarantined 5")
    with make_session_factory(pg_engine)() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 1
        enc = s.scalars(select(Encounter)).one()
        assert enc.unit == "MICU"
        assert enc.discharged_at is not None
        values = {c: v for c, v in s.execute(select(Observation.code, Observation.value))}
        assert values["8867-4"] == 92
        assert values["8310-5"] == pytest.approx((101.3 - 32) * 5 / 9)
        assert values["2345-7"] == pytest.approx(7.2 * 18.016)
        reasons = sorted(s.scalars(select(QuarantineItem.reason_code)))
        assert reasons == [
            "non_numeric_value",
            "non_numeric_value",
            "unknown_code",
            "unknown_unit",
            "withdrawn_result",
        ]
        # No direct identifier in clear text anywhere a reference is kept.
        refs = [p.source_ref for p in s.scalars(select(Patient))]
        assert all("MRN0001" not in r for r in refs)

    # A resent message (the sender missed our ACK) is acknowledged and changes nothing.
    (again,) = send_messages("127.0.0.1", server.port, [ORU_R01])
    assert msa(again)[1] == "AA"
    assert msa(again)[3].startswith("stored 0, duplicates 4")  # the patient and 3 results
    with make_session_factory(pg_engine)() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 3


def test_unreadable_messages_get_ar_with_reason(server: MllpServer, pg_engine: Engine) -> None:
    unsupported = ADT_A01.replace("ADT^A01", "ADT^A99")
    acks = send_messages("127.0.0.1", server.port, [unsupported, "not hl7 at all"])
    msa0, msa1 = msa(acks[0]), msa(acks[1])
    assert msa0[1:3] == ["AR", "ADM0001"]
    assert "message type ADT\\S\\A99 is not supported" in msa0[3]
    assert any(s.startswith("ERR|||200^") for s in acks[0].split("\r"))
    assert msa1[1] == "AR"
    assert "not an HL7 v2 message" in acks[1]
    with make_session_factory(pg_engine)() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 0


def test_two_messages_in_one_frame_get_ar_and_nothing_is_stored(
    server: MllpServer, pg_engine: Engine
) -> None:
    """MLLP frames one message per block: a frame with a second MSH is refused whole
    (it once got an AA for the first message and stored both under its patient)."""
    other = ORU_TWO_PATIENTS.split("\rPID|2")[0]  # Cat's result, control id E1
    (ack,) = send_messages("127.0.0.1", server.port, [ADT_A01 + "\r" + other])
    fields = msa(ack)
    assert fields[1:3] == ["AR", "ADM0001"]
    assert "2 MSH segments" in fields[3]
    assert "nothing was stored" in ack
    with make_session_factory(pg_engine)() as s:
        for table in (Patient, Encounter, Observation):
            assert s.scalar(select(func.count()).select_from(table)) == 0


def test_each_patient_group_of_an_oru_is_stored_under_its_patient(
    server: MllpServer, pg_engine: Engine
) -> None:
    (ack,) = send_messages("127.0.0.1", server.port, [ORU_TWO_PATIENTS])
    assert msa(ack)[1:4] == ["AA", "E1", "stored 4, duplicates 0"]
    with make_session_factory(pg_engine)() as s:
        rows = s.execute(
            select(Patient.sex, Observation.value).join(
                Patient, Patient.id == Observation.patient_id
            )
        )
        assert sorted(rows) == [("female", 61.0), ("male", 62.0)]


def test_a_nak_never_repeats_the_message(server: MllpServer) -> None:
    """The reason for an unreadable MSH names the problem, not the text after it."""
    acks = send_messages(
        "127.0.0.1",
        server.port,
        [WRONG_SEPARATOR, WRONG_SEPARATOR.replace("MSH:^~\\&|LAB", "MSH|^~\\&:LAB")],
    )
    for ack in acks:
        assert msa(ack)[1] == "AR"
        assert "not an HL7 v2 message" in ack
        for phi in ("MRN4242", "Secretname", "Jane", "19600101"):
            assert phi not in ack


def test_database_failure_gets_ae_and_stores_nothing(cipher: FieldCipher, pg_url: str) -> None:
    broken = create_db_engine(pg_url.rsplit("/", 1)[0] + "/no_such_database", check=False)
    srv = MllpServer(("127.0.0.1", 0), MessageHandler(make_session_factory(broken), cipher))
    srv.start_background()
    try:
        (ack,) = send_messages("127.0.0.1", srv.port, [ADT_A01])
    finally:
        srv.shutdown()
        srv.server_close()
        broken.dispose()
    assert msa(ack)[1:3] == ["AE", "ADM0001"]
    assert "nothing was stored, resend later" in msa(ack)[3]


def test_the_accepting_loop_beats_the_heartbeat_health_checks_read(server: MllpServer) -> None:
    """``listen hl7``'s /healthz reads this heartbeat (and the scorer's): it must move while
    the server accepts connections and stop when it no longer does."""
    time.sleep(1.2)  # two or three turns of serve_forever (every 0.5 s)
    assert server.heartbeat.age_s < 0.75
    server.shutdown()
    time.sleep(1.2)
    assert server.heartbeat.age_s > 1.0


def test_cancellations_over_mllp_are_acknowledged_after_they_are_stored(
    server: MllpServer, pg_engine: Engine
) -> None:
    """ADT^A11/A13 were unsupported (AR): each is now AA once committed, quarantined too."""
    a13 = adt_cancel("A13", "20240306090000", "CAN0013")  # after the A03 (03-05 12:00)
    a11 = adt_cancel("A11", "20240301120000", "CAN0011")  # after the A01, before the A13
    unknown = adt_cancel("A13", "20240306090000", "CAN0404", "V0404")
    acks = send_messages("127.0.0.1", server.port, [ADT_A01, ADT_A03, a13, a11, unknown])
    assert [msa(a)[1:3] for a in acks] == [
        ["AA", "ADM0001"],
        ["AA", "ADM0002"],
        ["AA", "CAN0013"],
        ["AA", "CAN0011"],
        ["AA", "CAN0404"],
    ]
    assert msa(acks[2])[3] == "stored 1, duplicates 0"  # the A13 reopened the stay
    # The A11 (03-01 12:00) is older than the A13 stored (03-06): it withdraws nothing.
    assert msa(acks[3])[3] == "stored 0, duplicates 1"
    assert msa(acks[4])[3] == "stored 0, duplicates 0, quarantined 1 (unknown_encounter 1)"
    assert [a.split("\r")[0].split("|")[8] for a in acks[2:4]] == ["ACK^A13^ACK", "ACK^A11^ACK"]
    assert only_stay(pg_engine).in_progress

    newer = adt_cancel("A11", "20240307090000", "CAN0012")
    (ack,) = send_messages("127.0.0.1", server.port, [newer])
    assert msa(ack)[1:4] == ["AA", "CAN0012", "stored 1, duplicates 0"]
    assert only_stay(pg_engine).withdrawn_reason == "cancelled"


def test_segments_ended_by_crlf_are_read_as_the_file_reader_reads_them(
    server: MllpServer, pg_engine: Engine
) -> None:
    """A sender that ends segments with CR LF (common in interface engines on Windows and
    in messages replayed from files) got AR "not an HL7 v2 message (unreadable MSH)" for
    every message: LF became a second CR, an empty segment. Files were read fine."""
    acks = send_messages(
        "127.0.0.1", server.port, [ADT_A01.replace("\r", "\r\n"), ORU_R01.replace("\r", "\r\n")]
    )
    assert [msa(a)[1:3] for a in acks] == [["AA", "ADM0001"], ["AA", "ORU0001"]]
    assert msa(acks[1])[3].startswith("stored 3, duplicates 1, quarantined 5")
    with make_session_factory(pg_engine)() as s:
        assert s.scalars(select(Encounter)).one().unit == "MICU"
        assert s.scalar(select(func.count()).select_from(Observation)) == 3
